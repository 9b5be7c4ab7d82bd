#!/usr/bin/env python3
"""How one-sided are received models? Honest vs Byzantine senders, from a simulation. JSON out.

Runs a ``flava-sim`` scenario and, at every gossip round of every node, records the
one-sidedness (``protocol.screens.one_sidedness``: the fraction of differing coordinates on the
majority side of the receiver's model) of each received model before the screens judge it,
split by whether the sender is one of the scenario's Byzantine nodes. Prints percentiles
(0, 50, 90, 99, 99.9, 100), counts, how many exceed ``gossip.max_one_sided``, and the run's
final accuracy. This is how the default threshold 0.65 was chosen (docs/benchmarks.md).

With a reference set (the reference screen's), it also records, for every honest receiver and
sender, the mean over their encounters of log(sender's reference loss / receiver's own), and
prints its 5/50/95th percentiles per kind of sender: whether any threshold could tell the
attackers from honest peers with other speakers (for label flipping on FSDD, none can).

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
    # (receiver, sender) → log(sender's reference loss / receiver's own), per encounter
    ratios: dict[tuple[bytes, bytes], list[float]] = {}
    byzantine_ids: set[bytes] = set()
    screen = node_module.NodeCore._screen

    def recording_screen(self: Any, fresh: Any, now: float) -> Any:
        me = self.identity.peer_id
        own = self.reference_loss(self.model) if self.reference_loss is not None else None
        for peer, received in fresh.items():
            kind = "byzantine" if peer in byzantine_ids else "honest"
            seen[kind].append(one_sidedness(received.model, self.model))
            if own is not None and me not in byzantine_ids:
                loss = self.reference_loss(received.model)
                ratios.setdefault((me, peer), []).append(float(np.log(loss / own)))
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
    for kind in ("honest", "byzantine"):
        means = [
            float(np.mean(v))
            for (_, p), v in ratios.items()
            if (p in byzantine_ids) == (kind == "byzantine")
        ]
        report[kind]["reference_log_ratio_pair_means_5_50_95"] = (
            np.percentile(means, [5, 50, 95]).round(3).tolist() if means else []
        )
    report["final"] = summary["final"]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
