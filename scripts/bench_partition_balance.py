#!/usr/bin/env python3
"""How a partitioned run would scale with more cores than this machine has. Prints JSON.

A partitioned run advances its partitions in conservative windows: each window, every
partition simulates up to the same virtual time, then they swap the datagrams for one another.
On W cores a window therefore takes as long as its slowest partition. This script runs the
scenario split into W partitions *in this one process*, one partition after another (the
``inline`` backend), times every partition's share of every window, and reports:

- ``busy_s``: the sum of all partitions' work (what one core would do, split overhead included);
- ``lockstep_s``: Σ over windows of the slowest partition: the run's length on W dedicated
  cores if exchanging datagrams and waking partitions were free;
- ``modelled_node_rounds_per_s``: nodes × rounds ÷ ``lockstep_s``;
- ``efficiency``: ``busy_s`` ÷ (W × ``lockstep_s``), 1.0 for a perfect split;
- ``heaviest``: the three windows that cost the most lockstep time beyond a perfect split, and
  which partition made each one wait.

It is a model, not a measurement of W cores: it leaves out the transport between processes and
contention for caches and memory bandwidth (on two cores here the measured two-process run
of protocol_10k runs at ~80% of its model's speed). The metrics are checked to be the same bytes
for every W.

    .venv/bin/python scripts/bench_partition_balance.py [--workers 1,2,4,8,16]
        [--scenario simulations/protocol_10k.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flava_p2p.cli.sim_run import load_with_overrides  # noqa: E402
from flava_p2p.sim.partitioned import PartitionedRun  # noqa: E402
from flava_p2p.sim.scenario import Scenario  # noqa: E402


class TimedRun(PartitionedRun):
    """The inline engine, with each partition's share of each call timed."""

    def __init__(self, scenario: Scenario, workers: int) -> None:
        self.calls: list[tuple[str, list[float]]] = []  # before: the constructor calls too
        super().__init__(scenario, workers=workers, backend="inline")

    def _call(self, method: str, args: list[tuple[Any, ...]] | None = None) -> list[Any]:
        calls = args or [() for _ in self._parts]
        out, times = [], []
        for part, a in zip(self._parts, calls, strict=True):
            t0 = time.perf_counter()
            out.append(getattr(part, method)(*a))
            times.append(time.perf_counter() - t0)
        self.calls.append((method, times))
        return out


def model(scenario: Scenario, workers: int) -> dict[str, Any]:
    """One inline run split W ways, and its lockstep model."""
    run = TimedRun(scenario, workers)
    with tempfile.TemporaryDirectory(prefix="bench-balance-") as tmp:
        t0 = time.perf_counter()
        run.run(tmp)
        wall = time.perf_counter() - t0
        digest = hashlib.sha256((Path(tmp) / "metrics.jsonl").read_bytes()).hexdigest()
    timed = [(m, t) for m, t in run.calls if m in ("start", "advance", "measure_part")]
    busy = sum(sum(t) for _, t in timed)
    lockstep = sum(max(t) for _, t in timed)
    waits = sorted(
        ((max(t) - sum(t) / len(t), i, t.index(max(t))) for i, (_, t) in enumerate(timed)),
        reverse=True,
    )
    node_rounds = scenario.nodes * scenario.rounds
    return {
        "workers": workers,
        "blocks": [len(b) for b in run.blocks],
        "windows": run.windows,
        "inline_wall_s": round(wall, 2),
        "busy_s": round(busy, 2),
        "lockstep_s": round(lockstep, 2),
        "modelled_node_rounds_per_s": round(node_rounds / lockstep, 1),
        "efficiency": round(busy / (workers * lockstep), 3),
        "busy_per_partition_s": [round(sum(t[k] for _, t in timed), 2) for k in range(workers)],
        "heaviest": [
            {"call": i, "excess_s": round(w, 3), "slowest_partition": k} for w, i, k in waits[:3]
        ],
        "metrics_sha256": digest,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "simulations/protocol_10k.yaml")
    ap.add_argument("--workers", default="1,2,4,8,16", help="comma-separated partition counts")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    sc: Scenario = load_with_overrides(str(args.scenario), args.set)
    rows = [model(sc, int(w)) for w in args.workers.split(",")]
    print(
        json.dumps(
            {
                "scenario": str(args.scenario),
                "overrides": args.set,
                "nodes": sc.nodes,
                "rounds": sc.rounds,
                "runs": rows,
                "metrics_identical": len({r["metrics_sha256"] for r in rows}) == 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
