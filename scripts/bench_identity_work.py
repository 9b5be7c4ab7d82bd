#!/usr/bin/env python3
"""How long minting one identity takes at a given identity-work difficulty. JSON out.

Mints the work nonce (``protocol/identity_work.py``) for ``--identities`` fresh seeded
identities at ``--bits`` (default: the task card's default) on one core, and prints the mean,
median, 90th percentile and maximum seconds per identity, plus the checking cost (one hash).
Minting time is geometric: its mean is 2^bits hashes, but single identities vary widely.

    .venv/bin/python scripts/bench_identity_work.py --bits 22 --identities 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np

from flava_p2p.identity import Identity
from flava_p2p.protocol.identity_work import has_work, mint_work
from flava_p2p.task import TaskCard


def main() -> int:
    default_bits = TaskCard.model_fields["identity_work_bits"].default
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bits", type=int, default=default_bits)
    parser.add_argument("--identities", type=int, default=20)
    parser.add_argument("--network", default="flava-default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seconds, nonces = [], []
    for k in range(args.identities):
        seed = hashlib.sha256(f"bench-identity-work/{args.seed}/{k}".encode()).digest()
        peer = Identity.from_seed(seed).peer_id
        started = time.perf_counter()
        nonce = mint_work(peer, args.network, args.bits)
        seconds.append(time.perf_counter() - started)
        nonces.append((peer, nonce))
    started = time.perf_counter()
    for peer, nonce in nonces:
        assert has_work(peer, args.network, nonce, args.bits)
    check_us = (time.perf_counter() - started) / len(nonces) * 1e6
    s = np.asarray(seconds)
    print(
        json.dumps(
            {
                "bits": args.bits,
                "identities": args.identities,
                "mint_seconds_mean": round(float(s.mean()), 3),
                "mint_seconds_median": round(float(np.median(s)), 3),
                "mint_seconds_p90": round(float(np.percentile(s, 90)), 3),
                "mint_seconds_max": round(float(s.max()), 3),
                "check_microseconds": round(check_us, 1),
                "hashes_expected": 2**args.bits,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
