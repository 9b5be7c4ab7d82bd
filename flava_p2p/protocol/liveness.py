"""Liveness: probes with suspect/dead states and adaptive timeouts from observed RTTs.

The timeout per peer follows TCP's estimator (RFC 6298): srtt + 4·rttvar, clamped. A missed
probe makes a peer *suspect*; ``dead_after`` consecutive misses make it *dead*. Any
authenticated message from the peer makes it *alive* again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class PeerState(Enum):
    """Liveness state of a peer."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass
class _Peer:
    state: PeerState = PeerState.ALIVE
    srtt: float | None = None
    rttvar: float = 0.0
    misses: int = 0
    pending: tuple[int, float] | None = None  # (nonce, sent_at)
    last_heard: float = 0.0
    seq: int = 0  # creation order: expire() reports in this order, whatever it scans


class Liveness:
    """Tracks probes and RTTs; pure (time is an argument)."""

    def __init__(self, initial_timeout: float = 1.0, min_timeout: float = 0.2,
                 max_timeout: float = 10.0, dead_after: int = 3) -> None:  # fmt: skip
        self.initial_timeout = initial_timeout
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.dead_after = dead_after
        self._peers: dict[bytes, _Peer] = {}
        # Peers with an outstanding probe: next_deadline() runs after every event, so it
        # must not scan every peer ever heard from (thousands in a large network).
        self._pending: set[bytes] = set()
        self._created = 0

    def _peer(self, peer: bytes, now: float) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            self._created += 1
            p = self._peers[peer] = _Peer(last_heard=now, seq=self._created)
        return p

    def state(self, peer: bytes) -> PeerState:
        """Current state (unknown peers count as alive)."""
        p = self._peers.get(peer)
        return p.state if p else PeerState.ALIVE

    def timeout(self, peer: bytes) -> float:
        """Adaptive probe timeout for ``peer``."""
        p = self._peers.get(peer)
        if p is None or p.srtt is None:
            return self.initial_timeout
        return min(self.max_timeout, max(self.min_timeout, p.srtt + 4 * p.rttvar))

    def heard_from(self, peer: bytes, now: float) -> None:
        """Any authenticated message proves the peer alive."""
        p = self._peer(peer, now)
        p.state, p.misses, p.last_heard = PeerState.ALIVE, 0, now

    def probe_sent(self, peer: bytes, nonce: int, now: float) -> None:
        """Record an outstanding PING."""
        self._peer(peer, now).pending = (nonce, now)
        self._pending.add(peer)

    def pong(self, peer: bytes, nonce: int, now: float) -> float | None:
        """Match a PONG; returns the RTT sample, or None if it answers no probe of ours."""
        p = self._peers.get(peer)
        if p is None or p.pending is None or p.pending[0] != nonce:
            return None
        rtt = now - p.pending[1]
        p.pending = None
        self._pending.discard(peer)
        if p.srtt is None:
            p.srtt, p.rttvar = rtt, rtt / 2
        else:
            p.rttvar = 0.75 * p.rttvar + 0.25 * abs(p.srtt - rtt)
            p.srtt = 0.875 * p.srtt + 0.125 * rtt
        self.heard_from(peer, now)
        return rtt

    def expire(self, now: float) -> list[tuple[bytes, PeerState]]:
        """Time out overdue probes; returns peers whose state changed, with the new state."""
        changed: list[tuple[bytes, PeerState]] = []
        peers = self._peers
        # Same expression as next_deadline(): `now - sent < timeout` can disagree by an ulp.
        # Only peers with a probe out are scanned (not all peers ever heard from), and the
        # overdue ones are handled in creation order, as a set's order is not reproducible.
        due = [
            k
            for k in self._pending
            if (pending := peers[k].pending) is not None and now >= pending[1] + self.timeout(k)
        ]
        if len(due) > 1:
            due.sort(key=lambda k: peers[k].seq)
        for peer in due:
            p = peers[peer]
            p.pending = None
            self._pending.discard(peer)
            p.misses += 1
            new = PeerState.DEAD if p.misses >= self.dead_after else PeerState.SUSPECT
            if new is not p.state:
                p.state = new
                changed.append((peer, new))
        return changed

    def next_deadline(self) -> float | None:
        """Earliest probe timeout."""
        times = [
            pending[1] + self.timeout(k)
            for k in self._pending
            if (pending := self._peers[k].pending) is not None
        ]
        return min(times) if times else None

    def forget_idle(self, keep: Callable[[bytes], bool]) -> None:
        """Forget every peer without an outstanding probe for which ``keep`` is false."""
        self._peers = {p: r for p, r in self._peers.items() if p in self._pending or keep(p)}

    def forget(self, peer: bytes) -> None:
        """Drop all state for a peer."""
        self._peers.pop(peer, None)
        self._pending.discard(peer)

    def rtt(self, peer: bytes) -> float | None:
        """Smoothed RTT, if measured."""
        p = self._peers.get(peer)
        return p.srtt if p else None
