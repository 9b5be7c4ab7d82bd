#!/usr/bin/env python3
"""DP-SGD vs non-private training throughput, and single-clip inference latency. Prints JSON.

Throughput goes through the real LocalTrainer.train() (Poisson loader, SpecAugment, Opacus) on
random features of the real shape, so no corpus is needed. Inference is the real
KeywordSpotter on one 1 s waveform: features + model, one thread.

    .venv/bin/python scripts/bench_dp.py [--batch 64 256] [--threads 1 2] [--steps 20]
        [--model dscnn|aligned_linear]
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
from flava_p2p.config import FeatureConfig, ModelConfig, PrivacyConfig, TrainingConfig
from flava_p2p.learning.dataset import FeatureSet
from flava_p2p.learning.features import FeatureExtractor
from flava_p2p.learning.inference import KeywordSpotter
from flava_p2p.learning.models import count_parameters
from flava_p2p.learning.trainer import LocalTrainer


def fake_set(n: int, fcfg: FeatureConfig) -> FeatureSet:
    ext = FeatureExtractor(fcfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, 1, ext.n_features, ext.n_frames), generator=g)
    y = torch.randint(0, 12, (n,), generator=g)
    labels = [f"c{i}" for i in range(12)]
    return FeatureSet(x, y, ["s"] * n, ["train"] * n, [""] * n, labels)


def throughput(fs: FeatureSet, model_cfg: ModelConfig, batch: int, dp: bool, steps: int) -> float:
    trainer = LocalTrainer(
        fs,
        model_cfg=model_cfg,
        feature_cfg=FeatureConfig(),
        training=TrainingConfig(batch_size=batch),
        noise_seed=0,
        privacy=PrivacyConfig(enabled=dp, planned_steps=10_000),
    )
    trainer.train(3)  # warm-up (allocations, oneDNN kernel selection)
    best = 0.0
    for _ in range(3):
        report = trainer.train(steps)
        best = max(best, report.examples / report.seconds)
    return best


def inference_ms(model_cfg: ModelConfig, reps: int) -> dict[str, float]:
    torch.set_num_threads(1)
    fcfg = FeatureConfig()
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
    clip = np.random.default_rng(0).normal(0, 0.1, (1, 16000)).astype(np.float32)
    for _ in range(10):
        spotter.predict_waves(clip)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        spotter.predict_waves(clip)
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--inference-reps", type=int, default=300)
    parser.add_argument("--model", default="dscnn", help="registered model (default dscnn)")
    args = parser.parse_args()
    quiet_known_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    fcfg = FeatureConfig()
    model_cfg = ModelConfig(name=args.model)
    fs = fake_set(4096, fcfg)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            dp = throughput(fs, model_cfg, batch, True, args.steps)
            plain = throughput(fs, model_cfg, batch, False, args.steps)
            rows.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "dp_samples_per_s": round(dp, 1),
                    "nonprivate_samples_per_s": round(plain, 1),
                    "ratio": round(dp / plain, 3),
                }
            )
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
        "throughput": rows,
        "min_ratio": min(r["ratio"] for r in rows),
        "target_ratio": 0.4,
        "inference_one_clip_one_thread": inference_ms(model_cfg, args.inference_reps),
        "target_inference_ms": 10.0,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
