"""Identity work: a proof-of-work bound to a PeerID, so that minting identities costs time.

Anyone who holds the network key can generate Ed25519 keys, so without a price a single host
could join as thousands of peers (a Sybil attack) and fill every view and merge set. A node
therefore accepts a peer only with a *work nonce*: 8 bytes such that

    BLAKE2b-256(person="flava-idwork", PeerID ‖ network id ‖ nonce)

starts with at least ``bits`` zero bits. Finding one takes 2^bits hashes on average (about
2 s at 22 bits on one core of the reference laptop, see ``scripts/bench_identity_work.py``);
checking one takes a single hash. The nonce is bound to the PeerID and the network, so work
done for one network or identity cannot be reused for another.

It is hashcash, not a memory-hard function: hardware built for hashing mints faster, so the
work prices identities rather than forbidding them. The per-host caps (``gossip.
max_peers_per_host``) are what bound many identities behind one address.
"""

from __future__ import annotations

import hashlib

NONCE_BYTES = 8
_PERSON = b"flava-idwork"
MAX_BITS = 40


def _prefix(peer_id: bytes, network_id: str) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=32, person=_PERSON)
    h.update(len(peer_id).to_bytes(1, "big") + peer_id + network_id.encode("utf-8"))
    return h


def work_bits(peer_id: bytes, network_id: str, nonce: bytes) -> int:
    """How many leading zero bits the nonce's hash has (0 for a nonce of the wrong length)."""
    if len(nonce) != NONCE_BYTES:
        return 0
    h = _prefix(peer_id, network_id)
    h.update(nonce)
    head = int.from_bytes(h.digest()[:8], "big")
    return 64 - head.bit_length()


def has_work(peer_id: bytes, network_id: str, nonce: bytes, bits: int) -> bool:
    """Whether ``nonce`` proves ``bits`` of work for ``peer_id`` on ``network_id``."""
    return bits <= 0 or work_bits(peer_id, network_id, nonce) >= bits


def mint_work(peer_id: bytes, network_id: str, bits: int, start: int = 0) -> bytes:
    """Search nonces from ``start`` until one proves ``bits`` of work (deterministic)."""
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"identity work of {bits} bits: choose 0–{MAX_BITS}")
    if bits == 0:
        return b""
    base = _prefix(peer_id, network_id)
    limit = 1 << (64 - bits)
    n = start
    while True:
        h = base.copy()
        nonce = n.to_bytes(NONCE_BYTES, "big")
        h.update(nonce)
        if int.from_bytes(h.digest()[:8], "big") < limit:
            return nonce
        n += 1
