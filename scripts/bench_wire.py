#!/usr/bin/env python3
"""Wire benchmarks. Prints JSON.

1. seal+open MB/s for a 1 MB delta through the whole wire path (msgpack, tensor codec,
   XChaCha20-Poly1305, chunking to 1200 B datagrams with pairwise MACs, reassembly,
   validation) vs raw libsodium on the same bytes: wire v1's Box + Ed25519 (the target's
   reference: ratio ≥ 0.5) and v2's XChaCha20-Poly1305;
2. one small datagram between peers that have talked (a PING, a SHUFFLE of 4 descriptors): µs
   to seal and open it through the endpoint, against the raw cost of wire v1's cryptography on
   the same bytes (Ed25519 sign + verify and a NaCl Box round trip) and of v2's (an
   XChaCha20-Poly1305 round trip);
3. wire bytes for one delta of the default keyword model per encoding;
4. loss repair: a 500 kB delta over 1200 B datagrams with independent loss on data and NACKs —
   share delivered within 3 repair rounds, and overhead bytes.

    .venv/bin/python scripts/bench_wire.py [--trials 500] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import nacl.bindings
import numpy as np
from nacl.public import Box
from nacl.signing import VerifyKey

from flava_p2p.config import ModelConfig
from flava_p2p.identity import Identity
from flava_p2p.learning.models import build_model, count_parameters
from flava_p2p.sim.lossy_link import send_over_lossy_link
from flava_p2p.speech.encoder import SPEECH_EMBEDDING
from flava_p2p.wire.endpoint import WireEndpoint
from flava_p2p.wire.messages import Delta, DpInfo, Message, PeerDescriptor, Ping, Shuffle
from flava_p2p.wire.tensors import encode_vector

NOW = 1_800_000_000.0
SCHEMA = b"s" * 32
A = Identity.from_seed(b"A" * 32)
B = Identity.from_seed(b"B" * 32)
_aead_enc = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
_aead_dec = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt


def pair() -> tuple[WireEndpoint, WireEndpoint]:
    a, b = WireEndpoint(A, "bench"), WireEndpoint(B, "bench")
    a.add_peer(B.keys)
    b.add_peer(A.keys)
    return a, b


def talked_pair() -> tuple[WireEndpoint, WireEndpoint]:
    """A and B after B has sent A something sealed: A's envelopes carry no intro."""
    a, b = pair()
    (d,) = b.seal(A.peer_id, Ping(0), NOW - 1)
    assert a.receive(d, NOW - 1)
    return a, b


def crypto_throughput(reps: int) -> dict[str, Any]:
    vec = np.random.default_rng(0).normal(size=250_000).astype(np.float32)  # 1 MB
    mb = vec.nbytes / 1e6
    ours = []
    for _ in range(reps):
        a, b = pair()
        t = time.perf_counter()
        msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(vec), DpInfo(1.0, 1e-5))
        got = []
        for d in a.seal(B.peer_id, msg, NOW, schema=SCHEMA):
            got += b.receive(d, NOW)
        ours.append(time.perf_counter() - t)
        assert got and got[0].vector is not None and np.array_equal(got[0].vector, vec)
    key, nonce = bytes(32), bytes(24)
    raw_bytes = vec.tobytes()
    raw_v2, raw_v1 = [], []
    box_ab, box_ba = Box(A.box_key, B.box_key.public_key), Box(B.box_key, A.box_key.public_key)
    vk = VerifyKey(A.keys.verify_key)
    for _ in range(reps):
        t = time.perf_counter()
        ct = _aead_enc(raw_bytes, b"header", nonce, key)
        assert _aead_dec(ct, b"header", nonce, key) == raw_bytes
        raw_v2.append(time.perf_counter() - t)
        t = time.perf_counter()
        boxed = box_ab.encrypt(raw_bytes)
        vk.verify(bytes(boxed), A.signing_key.sign(bytes(boxed)).signature)
        assert box_ba.decrypt(boxed) == raw_bytes
        raw_v1.append(time.perf_counter() - t)
    ours_mbs = mb / statistics.median(ours)
    v1_mbs = mb / statistics.median(raw_v1)
    v2_mbs = mb / statistics.median(raw_v2)
    return {
        "delta_mb": mb,
        "seal_open_mb_per_s": round(ours_mbs, 1),
        "raw_v1_box_ed25519_mb_per_s": round(v1_mbs, 1),
        "raw_v2_xchacha20poly1305_mb_per_s": round(v2_mbs, 1),
        "ratio": round(ours_mbs / v1_mbs, 3),
        "ratio_to_raw_v2": round(ours_mbs / v2_mbs, 3),
        "target_ratio": 0.5,
    }


def _median_us(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e6, 1)


def small_datagrams(reps: int) -> dict[str, Any]:
    """Per-datagram cost of the sealed kinds a protocol-only node mostly sends."""
    peers = tuple(
        PeerDescriptor(i.peer_id, i.keys.box_key, i.keys.box_key_sig, (f"/ip4/10.0.0.{k}/udp/9",))
        for k, i in enumerate(Identity.from_seed(bytes([k + 1]) * 32) for k in range(4))
    )
    box_ab, box_ba = Box(A.box_key, B.box_key.public_key), Box(B.box_key, A.box_key.public_key)
    vk = VerifyKey(A.keys.verify_key)
    key = bytes(32)
    out: dict[str, Any] = {}
    for name, msg in (("ping", Ping(7)), ("shuffle_4", Shuffle(peers))):
        a, b = talked_pair()
        seq = iter(range(10**9))

        def through_endpoint(
            a: WireEndpoint = a, b: WireEndpoint = b, m: Message = msg, seq: Iterator[int] = seq
        ) -> None:
            (d,) = a.seal(B.peer_id, m, NOW + next(seq) * 1e-4)
            assert b.receive(d, NOW + 1)

        (datagram,) = talked_pair()[0].seal(B.peer_id, msg, NOW)
        body = datagram[: len(datagram) - 40]  # about the plaintext's size

        def v1_crypto(body: bytes = body) -> None:
            ct = box_ab.encrypt(body)
            sig = A.signing_key.sign(bytes(ct)).signature
            vk.verify(bytes(ct), sig)
            box_ba.decrypt(ct)

        def v2_crypto(body: bytes = body) -> None:
            n = bytes(24)
            _aead_dec(_aead_enc(body, b"h" * 120, n, key), b"h" * 120, n, key)

        out[name] = {
            "datagram_bytes": len(datagram),
            "endpoint_seal_open_us": _median_us(through_endpoint, reps),
            "raw_v1_sign_verify_box_us": _median_us(v1_crypto, reps),
            "raw_v2_aead_us": _median_us(v2_crypto, reps),
        }
    return out


def wire_sizes() -> dict[str, Any]:
    """Datagrams and bytes of one delta of the default head and of the DS-CNN, per encoding."""
    models = {
        # The default: a linear head over the frozen encoder's 96-dim embeddings, 12 labels.
        "embed_linear": build_model(ModelConfig(), 12, SPEECH_EMBEDDING.dim, 1),
        # The log-mel DS-CNN (40 mel bands x 51 frames), the large model on the wire.
        "dscnn": build_model(ModelConfig(name="dscnn"), 12, 40, 51),
    }
    return {name: _delta_sizes(count_parameters(model)) for name, model in models.items()}


def _delta_sizes(n: int) -> dict[str, Any]:
    delta = np.random.default_rng(1).normal(0, 0.01, n).astype(np.float32)
    out: dict[str, Any] = {"parameters": n, "raw_fp32_bytes": 4 * n}
    for enc in ("fp32", "fp16", "int8", "topk"):
        for z in (False, True):
            a, _ = talked_pair()  # peers that have talked: the usual case for a delta
            vector = encode_vector(delta, enc, compress=z)
            ds = a.seal(B.peer_id, Delta(SCHEMA, b"g" * 32, 1, 1, vector), NOW, schema=SCHEMA)
            out[f"{enc}{'+zstd' if z else ''}"] = {
                "datagrams": len(ds),
                "wire_bytes": sum(map(len, ds)),
            }
    return out


def loss_repair(trials: int) -> list[dict[str, Any]]:
    vec = np.random.default_rng(2).normal(size=125_000).astype(np.float32)  # 500 kB
    msg = Delta(SCHEMA, b"g" * 32, 1, 1, encode_vector(vec))
    rows = []
    for loss in (0.05, 0.20):
        rng = random.Random(7)
        ok, rounds, overhead = 0, [], []
        for _ in range(trials):
            a, b = pair()
            r = send_over_lossy_link(
                a, b, a.seal(B.peer_id, msg, NOW, schema=SCHEMA), loss, rng, start=NOW
            )
            ok += r.delivered and r.repair_rounds <= 3
            rounds.append(r.repair_rounds)
            overhead.append(r.wire_bytes - r.payload_bytes)
        rows.append(
            {
                "loss": loss,
                "trials": trials,
                "delivered_within_3_rounds": ok / trials,
                "mean_repair_rounds": round(statistics.mean(rounds), 2),
                "first_transmission_bytes": r.payload_bytes,
                "mean_overhead_bytes": round(statistics.mean(overhead)),
                "mean_overhead_fraction": round(statistics.mean(overhead) / r.payload_bytes, 3),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    result = {
        "crypto": crypto_throughput(args.reps),
        "small_datagrams": small_datagrams(2000),
        "wire_sizes": wire_sizes(),
        "loss_repair": loss_repair(args.trials),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
