"""Centralized keyword-spotting baseline: train on training speakers, test on held-out speakers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from flava_p2p.config import (
    FeatureConfig,
    ModelConfig,
    PrivacyConfig,
    TrainingConfig,
    check_model_frontend,
    default_features,
)
from flava_p2p.errors import FlavaError
from flava_p2p.learning.models import count_parameters
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.speech.dataset import load_features, scan_corpus

log = structlog.get_logger(__name__)


def train_epochs(
    trainer: LocalTrainer,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> None:
    """Epochs of training with the learning rate cosine-decayed per epoch from ``lr`` to 0."""
    for epoch in range(epochs):
        trainer.set_lr(lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
        report = trainer.train(steps_per_epoch)
        if progress:
            info = {"epoch": epoch + 1, "loss": report.loss, "epsilon": report.epsilon}
            progress(epoch + 1, epochs, info)
        if report.steps == 0:
            break


def run_centralized(
    data: str | Path,
    *,
    dp_epsilon: float | None = None,
    delta: float = 1e-5,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.1,
    max_grad_norm: float = 1.0,
    width: int = 64,
    model: str = "embed_linear",
    pooling: str = "meanmax",
    holdout_speakers: float = 0.3,
    eval_data: str | Path | None = None,
    test_speakers: list[str] | None = None,
    accountant: str = "rdp",
    spec_augment: bool | None = None,
    augment_multiplicity: int = 1,
    ema_decay: float | None = None,
    features: FeatureConfig | None = None,
    labels: list[str] | None = None,
    seed: int = 0,
    threads: int = 1,
    momentum: float = 0.9,
    checkpoint: str | Path | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate once; returns the JSON-ready result dict.

    ``holdout_speakers`` is used only when the corpus has no validation/testing list files; then
    all held-out speakers are the test set. With list files, the testing list is.
    The learning rate follows a cosine decay to 0 over the run. SpecAugment defaults to on
    without DP and off with it (DP-SGD already underfits; masking adds more noise than it helps).
    With ``ema_decay`` the exponential moving average of the weights is evaluated
    and saved (post-processing, no privacy cost); the last iterate's accuracy is reported too.
    ``holdout_speakers`` ≥ 1 is a number of speakers rather than a fraction. With ``eval_data``
    the model trains on every speaker of ``data`` and is tested on every clip of ``eval_data``
    (e.g. synthetic speech in, real recordings out); the label sets must match. ``labels``
    (a task card's) fixes the label list and order; other folders are not read.
    """
    start = time.perf_counter()
    try:
        check_model_frontend(model, (features or default_features(model)).kind, "--model")
    except ValueError as exc:
        raise FlavaError(str(exc)) from None
    feature_cfg = features or default_features(model)
    scan = scan_corpus(
        data,
        holdout_speakers=0 if eval_data else holdout_speakers,
        seed=seed,
        test_speakers=test_speakers,
        labels=labels,
    )
    fs = load_features(scan, feature_cfg, threads=threads)
    if eval_data is not None:
        train = fs
        eval_scan = scan_corpus(eval_data, labels=labels)
        if eval_scan.labels != scan.labels:
            raise FlavaError(
                f"{eval_data}: labels {eval_scan.labels} differ from the training corpus' "
                f"{scan.labels}; evaluation needs the same label folders."
            )
        test = load_features(eval_scan, feature_cfg, threads=threads)
    else:
        train, test = fs.split("train"), fs.split("test")
        if not scan.has_lists or len(test) == 0:
            # Held out by --holdout-speakers: evaluate on every held-out speaker.
            test = fs.subset([i for i, split in enumerate(fs.splits) if split != "train"])
    if len(test) == 0:
        raise FlavaError(
            f"{data}: no held-out speakers; add validation/testing list files or pass "
            f"--holdout-speakers 0.3."
        )
    steps_per_epoch = math.ceil(len(train) / min(batch_size, len(train)))
    total = epochs * steps_per_epoch
    privacy = PrivacyConfig(
        enabled=dp_epsilon is not None,
        target_epsilon=dp_epsilon or 1.0,
        delta=delta,
        max_grad_norm=max_grad_norm,
        planned_steps=total,
        accountant=accountant,
    )
    model_cfg = ModelConfig.model_validate({"name": model, "width": width, "pooling": pooling})
    trainer = LocalTrainer(
        train,
        model_cfg=model_cfg,
        feature_cfg=feature_cfg,
        training=TrainingConfig(
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            spec_augment=(dp_epsilon is None) if spec_augment is None else spec_augment,
            augment_multiplicity=augment_multiplicity,
        ),
        privacy=privacy,
        seed=seed,
        noise_seed=seed,
        checkpoint_path=checkpoint,
        ema_decay=ema_decay,
    )
    train_epochs(trainer, epochs, steps_per_epoch, lr, progress)
    extra: dict[str, Any] = {}
    if ema_decay is not None:
        last_iterate = trainer.evaluate(test)
        extra["accuracy_last_iterate"] = last_iterate["accuracy"]
        trainer.use_ema_weights()
        trainer.save()  # the saved model is the one evaluated
    metrics = trainer.evaluate(test)
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "epsilon": trainer.ledger.epsilon if trainer.ledger else None,
        "delta": delta if trainer.ledger else None,
        "privacy_unit": "example" if trainer.ledger else None,
        "noise_multiplier": trainer.ledger.noise_multiplier if trainer.ledger else None,
        "steps": trainer.ledger.steps if trainer.ledger else epochs * steps_per_epoch,
        "n_train": len(train),
        "n_test": len(test),
        "n_train_speakers": len(set(train.speakers)),
        "n_test_speakers": len(set(test.speakers)),
        "test_speakers": sorted(set(test.speakers)),
        "eval_data": str(eval_data) if eval_data is not None else None,
        "encoded_clips": fs.encoded + (test.encoded if eval_data is not None else 0),
        "skipped_files": len(fs.skipped),
        "labels": fs.label_names,
        "model": model,
        "features": feature_cfg.kind,
        "pooling": pooling if model.startswith("embed_") else None,
        "width": width if model in ("dscnn", "embed_mlp") else None,
        "parameters": count_parameters(trainer.model),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "max_grad_norm": max_grad_norm if trainer.ledger else None,
        "augment_multiplicity": augment_multiplicity,
        "ema_decay": ema_decay,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        **extra,
    }
