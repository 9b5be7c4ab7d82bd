#!/usr/bin/env python3
"""DP-SGD vs non-private training throughput, single-clip inference latency and the speech
encoder's throughput. Prints JSON.

Throughput goes through the real LocalTrainer.train() (Poisson sampling, Opacus) on random
features of the real shape (cached features: the encoder is not in the loop), so no corpus is
needed. For the default linear head it reports both DP paths: the closed-form step the trainer
uses and Opacus' generic per-sample-gradient hooks. Inference is the real KeywordSpotter on
one 1 s waveform, centred in the model's window: encoder + head, one thread. Encoding is the
frozen encoder alone on 1.5 s clips, batches of 64, with 1 and 2 onnxruntime threads.

    .venv/bin/python scripts/bench_dp.py [--model embed_linear|embed_mlp|aligned_linear|dscnn]
        [--batch 64 256] [--threads 1 2] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from flava_p2p.cli.common import quiet_known_warnings
from flava_p2p.config import (
    FeatureConfig,
    ModelConfig,
    PrivacyConfig,
    TrainingConfig,
    default_features,
)
from flava_p2p.learning.inference import KeywordSpotter
from flava_p2p.learning.models import count_parameters
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.speech.audio import fix_length
from flava_p2p.speech.dataset import FeatureSet
from flava_p2p.speech.encoder import load_encoder
from flava_p2p.speech.features import make_frontend


def fake_set(n: int, fcfg: FeatureConfig) -> FeatureSet:
    ext = make_frontend(fcfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, 1, ext.n_features, ext.n_frames), generator=g)
    y = torch.randint(0, 12, (n,), generator=g)
    labels = [f"c{i}" for i in range(12)]
    return FeatureSet(x, y, ["s"] * n, ["train"] * n, [""] * n, labels)


def throughputs(
    fs: FeatureSet,
    model_cfg: ModelConfig,
    fcfg: FeatureConfig,
    batch: int,
    steps: int,
    variants: dict[str, tuple[bool, bool]],
    rounds: int = 7,
) -> dict[str, float]:
    """Samples per second of each variant ``name: (dp, closed_form)``.

    The variants' bursts are interleaved (A B C A B C …) and each keeps its best, so a slow
    moment of a shared VM hits every variant alike instead of skewing their ratio.
    """
    trainers = {
        name: LocalTrainer(
            fs,
            model_cfg=model_cfg,
            feature_cfg=fcfg,
            training=TrainingConfig(batch_size=batch),
            noise_seed=0,
            privacy=PrivacyConfig(enabled=dp, planned_steps=10_000_000),
            closed_form_dp=closed,
        )
        for name, (dp, closed) in variants.items()
    }
    for t in trainers.values():
        t.train(max(3, steps // 10))  # warm-up (allocations, oneDNN kernel selection)
    best = dict.fromkeys(trainers, 0.0)
    for _ in range(rounds):
        for name, t in trainers.items():
            report = t.train(steps)
            best[name] = max(best[name], report.examples / report.seconds)
    return best


def encode_clips_per_s(threads: int, clips: int = 256) -> float:
    """The frozen encoder alone on 1.5 s clips (best of 3)."""
    enc = load_encoder("speech_embedding", threads)
    x = np.random.default_rng(0).normal(0, 0.1, (clips, 24000)).astype(np.float32)
    enc.encode(x[:64])
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        enc.encode(x)
        best = max(best, clips / (time.perf_counter() - t))
    return best


def inference_ms(model_cfg: ModelConfig, fcfg: FeatureConfig, reps: int) -> dict[str, float]:
    torch.set_num_threads(1)
    trainer = LocalTrainer(
        fake_set(64, fcfg),
        model_cfg=model_cfg,
        feature_cfg=fcfg,
        training=TrainingConfig(),
        privacy=PrivacyConfig(enabled=False),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.ckpt"
        trainer.save(path)
        spotter = KeywordSpotter(path)
    one_second = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    window = round(fcfg.sample_rate * fcfg.clip_seconds)

    def once() -> None:
        clip = fix_length(one_second, window, spotter.extractor.center)
        spotter.predict_waves(clip[None, :])

    for _ in range(10):
        once()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=None, help="steps per timed burst")
    parser.add_argument("--inference-reps", type=int, default=300)
    parser.add_argument("--model", default="embed_linear", help="registered model")
    args = parser.parse_args()
    quiet_known_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    fcfg = default_features(args.model)
    model_cfg = ModelConfig.model_validate({"name": args.model})
    heads = args.model.startswith("embed_")
    steps = args.steps or (500 if heads else 20)
    fs = fake_set(4096, fcfg)
    variants = {"dp": (True, True), "plain": (False, True)}
    if args.model == "embed_linear":
        variants["hooks"] = (True, False)  # the same head through Opacus' generic hooks
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            got = throughputs(fs, model_cfg, fcfg, batch, steps, variants)
            row = {
                "threads": threads,
                "batch": batch,
                "dp_samples_per_s": round(got["dp"], 1),
                "nonprivate_samples_per_s": round(got["plain"], 1),
                "ratio": round(got["dp"] / got["plain"], 3),
            }
            if "hooks" in got:
                row["dp_opacus_hooks_samples_per_s"] = round(got["hooks"], 1)
                row["opacus_hooks_ratio"] = round(got["hooks"] / got["plain"], 3)
            rows.append(row)
    result = {
        "model": args.model,
        "parameters": count_parameters(
            LocalTrainer(
                fake_set(8, fcfg),
                model_cfg=model_cfg,
                feature_cfg=fcfg,
                training=TrainingConfig(),
                privacy=PrivacyConfig(enabled=False),
            ).model
        ),
        "features": fcfg.kind,
        "throughput": rows,
        "min_ratio": min(r["ratio"] for r in rows),
        "target_ratio": 0.8 if heads else 0.4,
        "inference_one_1s_clip_one_thread": inference_ms(model_cfg, fcfg, args.inference_reps),
        "target_inference_ms": 10.0,
    }
    if heads:
        result["encode_clips_per_s"] = {
            f"{t}_thread{'s' if t > 1 else ''}": round(encode_clips_per_s(t), 1) for t in (1, 2)
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
