#!/usr/bin/env python3
"""How one-sided are received models? Honest vs Byzantine senders, from a simulation. JSON out.

Runs a ``flava-sim`` scenario and, at every gossip round of every node, records the
one-sidedness (``protocol.screens.one_sidedness``: the fraction of differing coordinates on the
majority side of the receiver's model) of each received model before the screens judge it,
split by whether the sender is one of the scenario's Byzantine nodes. Prints percentiles
(0, 50, 90, 99, 99.9, 100), counts, how many exceed ``gossip.max_one_sided``, and the run's
final accuracy. This is how the default threshold 0.65 was chosen (docs/benchmarks.md).

    .venv/bin/python scripts/screen_stats.py simulations/byzantine16.yaml \\
        --set byzantine.attack=alie:z=2 --set gossip.max_one_sided=null
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from flava_p2p.cli.sim_run import load_with_overrides
from flava_p2p.protocol import node as node_module
from flava_p2p.protocol.screens import one_sidedness
from flava_p2p.sim.runner import Simulation


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/screen_stats")
    args = parser.parse_args()
    sc = load_with_overrides(args.scenario, args.set)
    seen: dict[str, list[float]] = {"honest": [], "byzantine": []}
    byzantine_ids: set[bytes] = set()
    screen = node_module.NodeCore._screen

    def recording_screen(self: Any, fresh: Any, now: float) -> Any:
        for peer, received in fresh.items():
            kind = "byzantine" if peer in byzantine_ids else "honest"
            seen[kind].append(one_sidedness(received.model, self.model))
        return screen(self, fresh, now)

    node_module.NodeCore._screen = recording_screen  # type: ignore[method-assign]
    sim = Simulation(sc)
    byzantine_ids.update(sim.identities[i].peer_id for i in sim.byzantine)
    summary = sim.run(args.out)
    limit = sc.gossip.max_one_sided
    report = {
        kind: {
            "n": len(values),
            "percentiles_0_50_90_99_99.9_100": (
                np.percentile(values, [0, 50, 90, 99, 99.9, 100]).round(3).tolist()
                if values
                else []
            ),
            "above_threshold": None if limit is None else int(sum(v > limit for v in values)),
        }
        for kind, values in seen.items()
    }
    report["final"] = summary["final"]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
