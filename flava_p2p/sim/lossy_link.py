"""A lossy point-to-point link between two real wire endpoints, on a virtual clock.

Used to measure loss repair: the sender's datagrams and the receiver's NACKs each cross the link
with independent loss; repair rounds are driven by the receiver's own NACK timer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from flava_p2p.wire.endpoint import Inbound, WireEndpoint


@dataclass(frozen=True)
class LinkResult:
    """Outcome of pushing one message across the link."""

    delivered: bool
    repair_rounds: int
    """NACK rounds the receiver needed (0: everything arrived the first time)."""
    payload_bytes: int
    """Bytes of the first transmission (the message's datagrams once each)."""
    wire_bytes: int
    """All bytes put on the link in both directions, including repairs and NACKs."""
    message: Inbound | None


def send_over_lossy_link(
    sender: WireEndpoint,
    receiver: WireEndpoint,
    datagrams: list[bytes],
    loss: float,
    rng: random.Random,
    *,
    start: float = 0.0,
    latency: float = 0.01,
    max_time: float = 5.0,
) -> LinkResult:
    """Deliver ``datagrams`` (one message) with independent ``loss``; returns what happened."""
    now = start
    wire = sum(len(d) for d in datagrams)
    got: list[Inbound] = []
    for d in datagrams:
        if rng.random() >= loss:
            got += receiver.receive(d, now + latency, "sender")
    now += latency
    rounds = 0
    step = receiver.reassembler.nack_delay
    while not got and now < start + max_time:
        now += step
        receiver.poll(now)
        nacks = receiver.take_outbox()
        if nacks:
            rounds = max(rounds, *(_nack_round(d) for _, d in nacks))
        for _, nack in nacks:
            wire += len(nack)
            if rng.random() >= loss:
                sender.receive(nack, now + latency, "receiver")
        for _, repair in sender.take_outbox():
            wire += len(repair)
            if rng.random() >= loss:
                got += receiver.receive(repair, now + 2 * latency, "sender")
        if not receiver.reassembler.buffered_bytes and not got:
            break  # receiver gave up
    return LinkResult(
        bool(got), rounds, sum(len(d) for d in datagrams), wire, got[0] if got else None
    )


def _nack_round(datagram: bytes) -> int:
    """Round number from a NACK datagram (works with or without a network key prefix)."""
    from flava_p2p.wire.fragments import NACK_HEAD

    for offset in (0, 16):
        if datagram[offset : offset + 1] == b"\x03" and len(datagram) > offset + NACK_HEAD.size:
            return int(NACK_HEAD.unpack_from(datagram, offset + 1)[2])
    return 0
