#!/usr/bin/env python3
"""Byzantine demo with real processes: honest accuracy under attack, per defence. JSON out.

For each (attack, aggregation) cell, start ``--nodes`` real `flava-node` processes on 127.0.0.1
over a speaker-partitioned corpus, ``--byzantine`` of them with ``--attack``, run for
``--seconds``, and report the honest nodes' mean and worst held-out accuracy next to an
attack-free run with the same defence.

    .venv/bin/python scripts/byzantine_demo.py --corpus data/synth --nodes 16 --byzantine 4 \\
        --attacks alie sign_flip scaling --aggregations clipped mean --seconds 240
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_cluster import Cluster, prepare


def run_cell(
    corpus: Path, root: Path, n: int, byz: int, attack: str | None, aggregation: str, seconds: float
) -> dict[str, Any]:
    """One run; returns honest accuracies."""
    shutil.rmtree(root, ignore_errors=True)
    homes = prepare(corpus, root, n, overrides={"gossip": {"aggregation": aggregation}})
    cluster = Cluster(homes)
    attackers = set(range(n - byz, n)) if attack else set()
    try:
        cluster.start_all(dict.fromkeys(attackers, attack) if attack else None)
        time.sleep(seconds)
        accs = []
        for i in range(n):
            if i in attackers:
                continue
            acc = cluster.status(i)["accuracy"]
            accs.append(acc["accuracy"] if acc else 0.0)
    finally:
        cluster.stop_all()
    return {
        "attack": attack or "none",
        "aggregation": aggregation,
        "honest_mean_accuracy": sum(accs) / len(accs),
        "honest_worst_accuracy": min(accs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--byzantine", type=int, default=4)
    parser.add_argument("--attacks", nargs="+", default=["alie", "sign_flip", "scaling"])
    parser.add_argument("--aggregations", nargs="+", default=["clipped", "mean"])
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--root", default="runs/byzantine")
    args = parser.parse_args()
    rows = []
    for agg in args.aggregations:
        base = run_cell(Path(args.corpus), Path(args.root), args.nodes, 0, None, agg, args.seconds)
        rows.append(base)
        print(json.dumps(base), file=sys.stderr)
        for attack in args.attacks:
            row = run_cell(
                Path(args.corpus),
                Path(args.root),
                args.nodes,
                args.byzantine,
                attack,
                agg,
                args.seconds,
            )
            row["fraction_of_attack_free"] = row["honest_mean_accuracy"] / max(
                base["honest_mean_accuracy"], 1e-9
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
