#!/usr/bin/env python3
"""kill -9 a training, gossiping node at random moments, many times. Prints JSON.

Two real nodes on 127.0.0.1; node 1 is killed with SIGKILL after a random delay, then
restarted from the same home, ``--kills`` times. After every kill the script checks that the
checkpoint and node state load (never corrupt), that the restart succeeds with the same PeerID,
and that the example-level ε reported after restart is ≥ every ε reported before the kill.

    .venv/bin/python scripts/crash_test.py --corpus data/synth --kills 50
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from flava_p2p.learning.checkpoint import load_checkpoint
from flava_p2p.runtime.state import STATE_FILE, NodeState
from flava_p2p.testing.cluster import Cluster, prepare


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--root", default="runs/crash")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=6.0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    homes = prepare(Path(args.corpus), Path(args.root), 2)
    cluster = Cluster(homes)
    failures: list[str] = []
    eps_seen = 0.0
    restarts = 0
    seq_floor = 0
    t0 = time.time()
    try:
        cluster.start(0)
        cluster.wait_ready(0)
        cluster.start(1)
        peer_id = cluster.wait_ready(1)["peer_id"]
        for k in range(args.kills):
            deadline = time.time() + rng.uniform(0.0, args.max_delay)
            while time.time() < deadline:  # sample ε while it runs: the max seen before the kill
                try:
                    ex = cluster.status(1)["privacy"]["example_level"]
                    eps_seen = max(eps_seen, ex["epsilon"])
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.2)
            cluster.kill(1)
            try:
                ckpt = load_checkpoint(homes[1] / "model.ckpt")
                state = NodeState.load(homes[1] / STATE_FILE)
            except Exception as exc:  # any failure here is a corrupt checkpoint
                failures.append(f"kill {k}: corrupt checkpoint/state: {exc}")
                break
            if ckpt.ledger is not None and ckpt.ledger.epsilon + 1e-12 < eps_seen:
                failures.append(f"kill {k}: ledger ε {ckpt.ledger.epsilon} < seen {eps_seen}")
            if state.seq_reserved < seq_floor:
                failures.append(f"kill {k}: seq reservation went back")
            seq_floor = state.seq_reserved
            cluster.start(1)
            try:
                s = cluster.wait_ready(1)
            except (RuntimeError, TimeoutError) as exc:
                failures.append(f"kill {k}: restart failed: {exc}")
                break
            restarts += 1
            if s["peer_id"] != peer_id:
                failures.append(f"kill {k}: PeerID changed")
            eps = s["privacy"]["example_level"]["epsilon"]
            if eps + 1e-12 < eps_seen:
                failures.append(f"kill {k}: ε after restart {eps} < before {eps_seen}")
            eps_seen = max(eps_seen, eps)
            print(f"kill {k + 1}/{args.kills}: ok, ε={eps:.4f}", file=sys.stderr)
    finally:
        cluster.stop_all()
    result = {
        "kills": args.kills,
        "successful_restarts": restarts,
        "failures": failures,
        "final_epsilon": eps_seen,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    return 0 if not failures and restarts == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
