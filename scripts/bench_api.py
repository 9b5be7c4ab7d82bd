#!/usr/bin/env python3
"""Recognition over the local API of real, training, gossiping nodes. Prints JSON.

Starts ``--nodes`` real ``flava-node`` processes on 127.0.0.1 (the speaker-partitioned corpus,
as scripts/local_cluster.py), lets them learn for ``--warmup`` seconds, measures node 0's round
pace for ``--window`` seconds, then has ``--clients`` concurrent clients post held-out clips to
node 0's ``POST /v1/recognize`` for another ``--window`` seconds (at least ``--clips`` requests)
and measures the pace again. Reports client-side latency (p50/p99), the node's own inference
latency, throughput, answers' accuracy, and rounds per minute without and with the load.

    .venv/bin/python scripts/bench_api.py --corpus data/fsdd --nodes 3
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from flava_p2p.speech.dataset import scan_corpus
from flava_p2p.testing.cluster import Cluster, prepare


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="data/fsdd")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--period", type=float, default=5.0, help="gossip.period_s of every node")
    args = p.parse_args()

    scan = scan_corpus(Path(args.corpus))
    held = [u for u in scan.utterances if u.split != "train"]
    clips = random.Random(0).sample(held, min(args.clips, len(held)))
    bodies = [(u.label, u.path.read_bytes()) for u in clips]
    root = Path(tempfile.mkdtemp(prefix="flava-bench-api-"))
    homes = prepare(
        Path(args.corpus),
        root,
        args.nodes,
        overrides={"gossip": {"period_s": args.period}, "privacy": {"target_epsilon": 8.0}},
    )
    cluster = Cluster(homes)
    try:
        cluster.start_all()
        url = json.loads((homes[0] / "status.json").read_text())["api"] + "/v1/recognize"
        time.sleep(args.warmup)
        quiet = _pace(cluster, args.window)
        results: list[dict[str, Any]] = []
        lock = threading.Lock()
        stop_at = time.time() + args.window
        start_round = cluster.status(0)["round"]
        t0 = time.time()

        def client(k: int) -> None:
            n = k
            while time.time() < stop_at or n < args.clips:
                label, body = bodies[n % len(bodies)]
                n += args.clients
                req = urllib.request.Request(  # noqa: S310 (loopback)
                    url, data=body, headers={"Content-Type": "audio/wav"}
                )
                sent = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                        out = json.loads(resp.read())
                    ok = True
                except (urllib.error.URLError, OSError):
                    out, ok = {}, False
                wall_ms = (time.perf_counter() - sent) * 1000
                with lock:
                    results.append({"ok": ok, "ms": wall_ms, "truth": label, **out})

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy_s = time.time() - t0
        busy_rounds = cluster.status(0)["round"] - start_round
        status = cluster.status(0)
    finally:
        cluster.stop_all()
    good = [r for r in results if r["ok"]]
    correct = float(np.mean([r["label"] == r["truth"] for r in good]))
    client_ms = np.array([r["ms"] for r in good])
    server_ms = np.array([r["latency_ms"] for r in good])
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "clients": args.clients,
                "requests": len(results),
                "failed": len(results) - len(good),
                "requests_per_s": round(len(good) / busy_s, 1),
                "client_latency_ms": {
                    "p50": round(float(np.percentile(client_ms, 50)), 1),
                    "p99": round(float(np.percentile(client_ms, 99)), 1),
                },
                "node_inference_ms": {
                    "p50": round(float(np.percentile(server_ms, 50)), 1),
                    "p99": round(float(np.percentile(server_ms, 99)), 1),
                },
                "answers_correct": round(correct, 3),
                "rounds_per_min_quiet": round(quiet, 2),
                "rounds_per_min_under_load": round(busy_rounds / busy_s * 60, 2),
                "gossip_period_s": args.period,
                "node0_epsilon": status["privacy"]["example_level"]["epsilon"],
                "node0_accuracy": status["accuracy"],
            }
        )
    )
    return 0


def _pace(cluster: Cluster, seconds: float) -> float:
    """Node 0's rounds per minute over ``seconds``."""
    r0, t0 = cluster.status(0)["round"], time.time()
    time.sleep(seconds)
    return float(cluster.status(0)["round"] - r0) / (time.time() - t0) * 60


if __name__ == "__main__":
    raise SystemExit(main())
