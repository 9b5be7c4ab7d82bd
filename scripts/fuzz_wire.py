#!/usr/bin/env python3
"""Fuzz the whole wire receive path with random and mutated datagrams. Prints JSON.

A legitimate sender seals a corpus of real messages of every type (single datagrams, fragments
of large deltas, NACKs). The fuzzer feeds a receiver random bytes and mutations of that corpus
(bit flips, byte edits, truncation, extension, splices, header edits re-encoded but not
re-signed, chunk-header edits). It counts:

- uncaught exceptions escaping ``WireEndpoint.receive`` (must be 0);
- accepted forgeries: an accepted message that is not exactly what the legitimate sender sent
  under that sequence number (must be 0);
- rejections by reason, throughput and peak RSS.

    .venv/bin/python scripts/fuzz_wire.py --datagrams 1000000 [--seed 0] [--network-key]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from flava_p2p.identity import Identity
from flava_p2p.wire.endpoint import WireEndpoint
from flava_p2p.wire.messages import (
    Delta,
    DpInfo,
    Hello,
    HelloAck,
    Message,
    PeerDescriptor,
    Ping,
    Pong,
    Shuffle,
    ShuffleReply,
)
from flava_p2p.wire.tensors import encode_vector

NOW = 1_800_000_000.0
SCHEMA = b"s" * 32


def legit_corpus(
    a: Identity, b: Identity, key: bytes | None, rng: random.Random
) -> tuple[list[bytes], dict[int, Message]]:
    """Real datagrams from A to B, and what A sent under each seqno."""
    ep = WireEndpoint(a, "fuzznet", network_key=key)
    ep.add_peer(b.keys)
    sent: dict[int, Message] = {}
    datagrams: list[bytes] = []
    desc = PeerDescriptor(b.peer_id, b.keys.box_key, b.keys.box_key_sig, ("/ip4/1.2.3.4/udp/5",))
    vec = np.random.default_rng(rng.randrange(2**32)).normal(size=3000).astype(np.float32)
    msgs: list[Message] = [
        Hello(a.keys.box_key, a.keys.box_key_sig, ("/ip4/127.0.0.1/udp/7946",)),
        HelloAck(a.keys.box_key, a.keys.box_key_sig),
        Ping(1),
        Pong(2),
        Shuffle((desc,)),
        ShuffleReply((desc, desc)),
        Delta(SCHEMA, b"g" * 32, 3, 10, encode_vector(vec[:50], "fp16"), DpInfo(1.0, 1e-5)),
        Delta(SCHEMA, b"g" * 32, 4, 10, encode_vector(vec, "int8", compress=True)),
        Delta(SCHEMA, b"g" * 32, 5, 10, encode_vector(vec, "fp32")),  # fragmented
        Delta(SCHEMA, b"g" * 32, 6, 10, encode_vector(vec, "topk")),
    ]
    for m in msgs:
        seq = ep.next_seq
        to = None if isinstance(m, Hello) else b.peer_id
        datagrams += ep.seal(to, m, NOW, schema=SCHEMA if isinstance(m, Delta) else b"")
        sent[seq] = m
    # NACKs (receiver → sender direction, arriving at B as if from A) are part of the corpus too.
    rx = WireEndpoint(b, "fuzznet", network_key=key)
    rx.add_peer(a.keys)
    for d in datagrams[-20:-10]:
        rx.receive(d, NOW)
    rx.poll(NOW + 1)
    datagrams += [d for _, d in rx.take_outbox()]
    return datagrams, sent


def _flip(d: bytes, rng: random.Random) -> bytes:
    out = bytearray(d)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out) * 8)
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def _edit(d: bytes, rng: random.Random) -> bytes:
    out = bytearray(d)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(out)


def _header_edit(d: bytes, rng: random.Random) -> bytes:
    """Change one decoded header field, re-encode canonically, keep the old signature."""
    if d[:1] != b"\x01" or len(d) < 4:
        return _flip(d, rng)
    hlen = int.from_bytes(d[1:3], "big")
    try:
        fields = msgpack.unpackb(d[3 : 3 + hlen])
    except Exception:
        return _flip(d, rng)
    i = rng.randrange(len(fields))
    v = fields[i]
    if isinstance(v, int):
        fields[i] = v + rng.choice([-1, 1, 2**32])
    elif isinstance(v, bytes):
        fields[i] = bytes(rng.randrange(256) for _ in range(len(v)))
    else:
        fields[i] = "evilnet"
    hb = msgpack.packb(fields, use_bin_type=True)
    return b"\x01" + len(hb).to_bytes(2, "big") + bytes(hb) + d[3 + hlen :]


MUTATORS: list[Callable[[bytes, random.Random], bytes]] = [
    _flip,
    _edit,
    _header_edit,
    lambda d, r: d[: r.randrange(len(d))],
    lambda d, r: d + r.randbytes(r.randint(1, 64)),
    lambda d, r: d[: r.randrange(1, len(d))] + r.randbytes(r.randint(0, 32)),
]


def run_fuzz(n: int, seed: int = 0, network_key: bool = False) -> dict[str, Any]:
    """Feed ``n`` datagrams to fresh receivers; return the counts (see module docstring)."""
    rng = random.Random(seed)
    a = Identity.from_seed(bytes([seed % 256]) * 31 + b"a")
    b = Identity.from_seed(bytes([seed % 256]) * 31 + b"b")
    key = bytes(range(32)) if network_key else None
    corpus, sent = legit_corpus(a, b, key, rng)
    uncaught = forgeries = accepted = 0
    examples: list[str] = []
    reasons: Counter[str] = Counter()
    receiver: WireEndpoint | None = None
    start = time.perf_counter()
    for i in range(n):
        if i % 5000 == 0:  # fresh replay state so mutants keep reaching the deep checks
            if receiver is not None:
                reasons.update(receiver.rejections.by_reason())
            receiver = WireEndpoint(b, "fuzznet", network_key=key)
            receiver.add_peer(a.keys)
        assert receiver is not None
        r = rng.random()
        if r < 0.15:
            d = rng.randbytes(rng.randint(0, 1400))
        elif r < 0.2:
            d = rng.choice(corpus)  # legitimate, possibly duplicated: must never be a forgery
        elif r < 0.25:
            x, y = rng.choice(corpus), rng.choice(corpus)
            d = x[: rng.randrange(len(x))] + y[rng.randrange(len(y)) :]
        else:
            d = rng.choice(MUTATORS)(rng.choice(corpus), rng)
        try:
            got = receiver.receive(d, NOW, "fuzzer")
        except Exception:
            uncaught += 1
            if len(examples) < 3:
                examples.append(traceback.format_exc())
            continue
        for m in got:
            accepted += 1
            if m.sender != a.peer_id or sent.get(m.header.seq) != m.message:
                forgeries += 1
    assert receiver is not None
    reasons.update(receiver.rejections.by_reason())
    seconds = time.perf_counter() - start
    return {
        "datagrams": n,
        "network_key": network_key,
        "seed": seed,
        "uncaught_exceptions": uncaught,
        "accepted_forgeries": forgeries,
        "accepted_legitimate": accepted - forgeries,
        "rejections_by_reason": dict(reasons.most_common()),
        "seconds": round(seconds, 2),
        "datagrams_per_second": round(n / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "exception_examples": examples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datagrams", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network-key", action="store_true", help="receiver requires a key")
    args = parser.parse_args()
    result = run_fuzz(args.datagrams, args.seed, args.network_key)
    print(json.dumps(result, indent=1))
    return 0 if result["uncaught_exceptions"] == 0 and result["accepted_forgeries"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
