#!/usr/bin/env python3
"""Byzantine demo with real processes: honest accuracy under attack, per defence. JSON out.

For each (aggregation, attack) cell, start ``--nodes`` real `flava-node` processes on 127.0.0.1
over a speaker-partitioned corpus (node 0 is the bootstrap), the last ``--byzantine`` of them
with ``--attack``; run until every honest node has spent its privacy budget (then ``--linger``
seconds more of merging), or ``--seconds`` at most; report the honest nodes' mean and worst
held-out accuracy next to the attack-free run with the same defence. ``mean`` cells run with
every pre-merge screen off (``flava_p2p.config.SCREENS_OFF``: no defence at all); the others
keep the node's defaults.

    .venv/bin/python scripts/byzantine_demo.py --corpus data/synth --nodes 16 --byzantine 4 \\
        --attacks alie sign_flip scaling --aggregations clipped mean \\
        --set privacy.target_epsilon=200 --set privacy.planned_steps=300 --out runs/byz.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from flava_p2p.config import SCREENS_OFF
from flava_p2p.testing.cluster import Cluster, parse_sets, prepare


def run_cell(
    args: argparse.Namespace, attack: str | None, aggregation: str, sets: dict[str, Any]
) -> dict[str, Any]:
    """One run; returns honest accuracies."""
    root, n = Path(args.root), args.nodes
    shutil.rmtree(root, ignore_errors=True)
    gossip = {**sets.get("gossip", {}), "aggregation": aggregation}
    if aggregation == "mean":
        # Plain mean: no screening either, the true undefended baseline.
        gossip.update(SCREENS_OFF)
    overrides = {**sets, "gossip": gossip}
    homes = prepare(
        Path(args.corpus), root, n, overrides=overrides, reference_per_label=args.reference
    )
    cluster = Cluster(homes)
    attackers = set(range(n - args.byzantine, n)) if attack else set()
    honest = [i for i in range(n) if i not in attackers]
    start = time.time()
    if attack == "alie":
        # ALIE's strength depends on how many colluders the attacker assumes (the paper's z
        # from n and f); the demo knows f, a lone-attacker default would attack nothing.
        attack = f"alie:f={len(attackers)}"
    try:
        cluster.start_all(dict.fromkeys(attackers, attack) if attack else None)
        started = time.time()
        done_at = None
        while time.time() - started < args.seconds:
            time.sleep(5)
            spent = all(
                cluster.status(i)["privacy"]["budget"] == "budget_exhausted" for i in honest
            )
            if spent and done_at is None:
                done_at = time.time()
            if done_at is not None and time.time() - done_at >= args.linger:
                break
        statuses = {i: cluster.status(i) for i in honest}
    finally:
        cluster.stop_all()
    accs = [(s["accuracy"] or {}).get("accuracy", 0.0) for s in statuses.values()]
    eps = [s["privacy"]["example_level"]["epsilon"] for s in statuses.values()]
    penalties: dict[str, int] = {}  # what the honest nodes' screens charged, by reason
    for s in statuses.values():
        for name, count in s.get("counters", {}).items():
            if name.startswith("penalty_"):
                reason = name.removeprefix("penalty_")
                penalties[reason] = penalties.get(reason, 0) + count
    return {
        "attack": attack or "none",
        "aggregation": aggregation,
        "nodes": n,
        "byzantine": len(attackers),
        "honest_mean_accuracy": sum(accs) / len(accs),
        "honest_worst_accuracy": min(accs),
        "honest_accuracies": accs,
        "epsilon_max": max(eps),
        "rounds_mean": sum(s["round"] for s in statuses.values()) / len(statuses),
        "penalties": penalties,
        "budgets_spent": done_at is not None,
        "wall_seconds": round(time.time() - start, 1),
    }


def save(out: str | None, rows: list[dict[str, Any]]) -> None:
    """Write the rows so far to ``--out`` (if given)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--byzantine", type=int, default=4)
    parser.add_argument(
        "--attacks",
        nargs="*",
        default=["alie", "sign_flip", "scaling"],
        help="attack specs (flava-node run --attack); none listed: only the attack-free cells",
    )
    parser.add_argument("--aggregations", nargs="+", default=["clipped", "mean"])
    parser.add_argument("--seconds", type=float, default=900, help="cap per cell after start")
    parser.add_argument(
        "--linger", type=float, default=20, help="merging time after budgets are spent"
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not run the attack-free cells"
    )
    parser.add_argument(
        "--reference",
        type=int,
        default=20,
        help="validation clips per label as the nodes' public reference set (0: none)",
    )
    parser.add_argument("--root", default="runs/byzantine")
    parser.add_argument("--out", default=None, help="also write the JSON rows here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="node.yaml override for every node, e.g. --set privacy.target_epsilon=200",
    )
    args = parser.parse_args()
    sets = parse_sets(args.set)
    rows = []
    for agg in args.aggregations:
        base = None
        if not args.skip_baseline:
            base = run_cell(args, None, agg, sets)
            rows.append(base)
            print(json.dumps(base), file=sys.stderr, flush=True)
            save(args.out, rows)
        for attack in args.attacks:
            row = run_cell(args, attack, agg, sets)
            if base is not None:
                row["fraction_of_attack_free"] = row["honest_mean_accuracy"] / max(
                    base["honest_mean_accuracy"], 1e-9
                )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            save(args.out, rows)  # after every cell: a long demo cut short keeps what it ran
    save(args.out, rows)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
