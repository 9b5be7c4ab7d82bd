#!/usr/bin/env python3
"""Three real `flava-node` processes learning through a relay, against the same three over UDP.

``--mode relay``: R serves Circuit Relay v2 (libp2p only, listening on 127.0.0.1); A and B
speak libp2p only and have **no listening address at all** (as two devices behind NAT): each
keeps a reservation at R and advertises only ``R/p2p-circuit/p2p/<itself>``, so every A-B
connection runs through R, whichever of them dials first (with one of them listening, the other
could dial it directly and the relay would carry nothing between them). All three train on
their own speakers' clips and bootstrap from R. ``--mode udp``: the same three nodes,
same data and seeds, over FLAVA's UDP wire. ``--mode mixed``: four nodes, UDP only, libp2p
only, both, both (node 0 is a "both" bootstrap). Each node reports its held-out accuracy, its
peers, and over which carrier (and whether relayed) it reached them. JSON out.

    .venv/bin/python scripts/libp2p_demo.py --corpus data/fsdd_val --mode relay --seconds 240
    .venv/bin/python scripts/libp2p_demo.py --corpus data/fsdd_val --mode udp --seconds 240
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flava_p2p.testing.cluster import Cluster, parse_sets, prepare

LIBP2P = {"transport": "libp2p", "libp2p_listen": ["/ip4/127.0.0.1/tcp/0"]}
TRANSPORTS: dict[str, list[dict[str, Any]]] = {
    "relay": [
        {**LIBP2P, "relay": "serve"},  # R
        {**LIBP2P, "libp2p_listen": []},  # A: outbound only; relays filled in once R is up
        {**LIBP2P, "libp2p_listen": []},  # B: the same
    ],
    "udp": [{}, {}, {}],
    "mixed": [
        {"transport": "both", "libp2p_listen": ["/ip4/127.0.0.1/tcp/0"]},
        {"transport": "udp"},
        dict(LIBP2P),
        {"transport": "both", "libp2p_listen": ["/ip4/127.0.0.1/tcp/0"]},
    ],
}
NAMES = {
    "relay": ["R", "A", "B"],
    "udp": ["R", "A", "B"],
    "mixed": ["both0", "udp", "libp2p", "both3"],
}


def set_network(home: Path, network: dict[str, Any]) -> None:
    """Merge ``network`` into a prepared node's node.yaml."""
    path = home / "node.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.setdefault("network", {}).update(network)
    path.write_text(yaml.safe_dump(cfg))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``args.mode``; per node: accuracy, ε, peers and how they were reached."""
    root = Path(args.root) / args.mode
    shutil.rmtree(root, ignore_errors=True)
    transports = TRANSPORTS[args.mode]
    homes = prepare(
        Path(args.corpus),
        root,
        len(transports),
        overrides=parse_sets(args.set),
        reference_per_label=args.reference,
    )
    for home, network in zip(homes, transports, strict=True):
        set_network(home, network)
    cluster = Cluster(homes)
    names = NAMES[args.mode]
    try:
        t0 = time.time()
        cluster.start(0, bootstrap=[])
        cluster.wait_ready(0, 300)
        boot = cluster.multiaddrs(0)
        if args.mode == "relay":
            relay_addr = [a for a in boot if "/tcp/" in a][:1]
            for home in homes[1:]:
                set_network(home, {"relays": relay_addr})
        for i in range(1, len(homes)):
            cluster.start(i, bootstrap=boot)
        for i in range(1, len(homes)):
            cluster.wait_ready(i, 300)
        ready = time.time() - t0
        time.sleep(args.seconds)
        name_of = {cluster.status(j)["peer_id"]: names[j] for j in range(len(homes))}
        nodes = []
        for i, name in enumerate(names):
            s = cluster.status(i)
            acc = s["accuracy"] or {}
            nodes.append(
                {
                    "node": name,
                    "transport": transports[i].get("transport", "udp"),
                    "addresses": s["addresses"],
                    "round": s["round"],
                    "accuracy": acc.get("accuracy"),
                    "epsilon": (s["privacy"]["example_level"] or {}).get("epsilon"),
                    "peers": [
                        {
                            "peer": name_of.get(p["peer_id"], p["peer_id"]),
                            "via": p.get("transport"),
                            "relayed": p.get("relayed"),
                            "state": p["state"],
                        }
                        for p in s["peers"]
                    ],
                    "deltas_received": s["counters"].get("deltas_received", 0),
                    "libp2p_counters": {
                        k: v for k, v in s.get("counters", {}).items() if "libp2p" in k
                    },
                }
            )
        accs = [n["accuracy"] for n in nodes if n["accuracy"] is not None]
        return {
            "mode": args.mode,
            "seconds": args.seconds,
            "startup_s": round(ready, 1),
            "mean_accuracy": sum(accs) / len(accs) if accs else None,
            "worst_accuracy": min(accs) if accs else None,
            "nodes": nodes,
        }
    finally:
        cluster.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="corpus in the project layout")
    parser.add_argument("--mode", choices=sorted(TRANSPORTS), default="relay")
    parser.add_argument("--seconds", type=float, default=240, help="run time after all are up")
    parser.add_argument("--root", default="runs/libp2p")
    parser.add_argument("--reference", type=int, default=20, help="public reference clips/label")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a node.yaml setting on every node",
    )
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
