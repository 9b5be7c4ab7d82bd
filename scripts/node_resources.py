#!/usr/bin/env python3
"""Per-node RSS and CPU of real `flava-node` processes, while training and when idle.

Starts 2 nodes (local_cluster, speaker-partitioned corpus). Phase "training": σ planned for
4,000 steps, so the nodes train every round for the whole window. Phase "idle": a budget of 8
steps, spent in the first round; afterwards the nodes only gossip, probe and shuffle. For each
phase node 1's RSS (VmRSS) and CPU (utime+stime deltas from /proc) are sampled every second
over ``--seconds`` after a warm-up. Prints JSON.

    .venv/bin/python scripts/node_resources.py --corpus data/synth --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from flava_p2p.testing import cluster as local_cluster

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(corpus: Path, planned_steps: int, warmup: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        homes = local_cluster.prepare(
            corpus, Path(tmp), 2, overrides={"privacy": {"planned_steps": planned_steps}}
        )
        cluster = local_cluster.Cluster(homes)
        try:
            cluster.start_all()
            time.sleep(warmup)
            pid = cluster.procs[1].pid
            rss = []
            c0, t0 = _cpu_seconds(pid), time.monotonic()
            end = t0 + seconds
            while time.monotonic() < end:
                rss.append(_rss_mb(pid))
                time.sleep(1.0)
            cpu = (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            status = cluster.status(1)
            return {
                "rss_mb_mean": round(sum(rss) / len(rss), 1),
                "rss_mb_max": round(max(rss), 1),
                "cpu_cores_mean": round(cpu, 3),
                "budget": status["privacy"]["budget"],
                "round": status["round"],
            }
        finally:
            cluster.stop_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=15.0)
    args = p.parse_args()
    corpus = Path(args.corpus)
    out = {
        "training": measure(corpus, 4000, args.warmup, args.seconds),
        "idle": measure(corpus, 8, args.warmup, args.seconds),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
