"""Protocol faults for simulations: rogue hosts outside the network that send forged,
replayed, malformed or flooding datagrams (``faults:`` in a scenario).

Byzantine *nodes* run their network attacks through ``attacks/network.py``, as real nodes do;
these hosts are different: they hold no identity in the network (a forger seals with its own
X25519 key while claiming an honest node's PeerID) and sniff honest traffic to replay it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from nacl.public import Box, PrivateKey, PublicKey

from flava_p2p.wire.endpoint import KIND_ENVELOPE
from flava_p2p.wire.envelope import VERSION, PairKeys, seal_envelope
from flava_p2p.wire.messages import MsgType

#: Datagrams in one flood firing of a rogue host.
FLOOD_BURST = 50


@dataclass
class RogueHost:
    """A source of faulty datagrams: where it sends from, what kinds, how often."""

    addr: tuple[str, int]
    kinds: list[str]
    rate: float
    rng: random.Random
    sent: Counter[str] = field(default_factory=Counter)


def forged_ping(
    key: PrivateKey,
    *,
    network_id: str,
    claimed_sender: bytes,
    recipient: bytes,
    recipient_box_key: bytes,
    now: float,
    rng: random.Random,
) -> bytes:
    """A well-formed PING envelope claiming to come from ``claimed_sender``, with a fresh seqno
    (so it passes the replay guard), sealed for ``recipient`` with the forger's own X25519
    ``key``: only the AEAD tag check stops it."""
    fields: dict[str, object] = {
        "version": VERSION,
        "type": int(MsgType.PING),
        "network": network_id,
        "sender": claimed_sender,
        "recipient": recipient,
        "seq": (1 << 40) + rng.getrandbits(32),
        "timestamp_ms": int(now * 1000),
        "round": 0,
        "schema": b"",
    }
    pair = PairKeys.derive(Box(key, PublicKey(recipient_box_key)).shared_key())
    return KIND_ENVELOPE + seal_envelope(pair, fields, rng.randbytes(48))


def garbage(rng: random.Random) -> bytes:
    """Random bytes of a random datagram size."""
    return rng.randbytes(rng.randint(1, 1200))
