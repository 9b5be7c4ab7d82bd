"""Peer scores and graylisting, fed by authenticated wire rejections and aggregation outliers.

Only failures that can be attributed (after a signature, AEAD tag or pairwise MAC verified) lower a
peer's score; unauthenticated garbage is charged to the source *address*, which is graylisted
by rate so a flooder costs little. Scores decay back towards zero so a peer recovers from a
transient fault.

Scores forget within minutes, and in a large network a node meets a given peer only every few
rounds, so a second mechanism remembers: the *reputation*, a per-peer tally of how many of its
models the screens judged and how many they refused, discounted with a long half-life. A peer
refused often enough, in a large enough share of its encounters, is graylisted however its
attacks are spread over time, and each repeat offence doubles the graylist time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Score penalty per rejection reason (authenticated sources only).
PENALTIES: dict[str, float] = {
    "bad_payload": 5.0,
    "bad_tensor": 5.0,
    "identity_mismatch": 5.0,
    "bad_fragment": 3.0,
    "schema_mismatch": 2.0,
    "reassembly_cap": 1.0,
    "reassembly_timeout": 0.2,
    "outlier": 1.0,
    "opposed": 1.0,
    # A model that predicts public reference clips worse than an untrained one is wrong, not
    # late; charged more than the score decays per round, so a persistent sender graylists.
    "reference": 2.0,
    "norm_bound": 1.0,
    "flood": 10.0,
}


@dataclass
class _Addr:
    times: deque[float] = field(default_factory=deque)


@dataclass
class Evidence:
    """One peer's screening record (discounted counts, see :meth:`PeerScores.observe`)."""

    judged: float = 0.0
    refused: float = 0.0
    at: float = 0.0
    offences: int = 0
    """How many times the reputation graylisted this peer (each doubles the next term)."""


@dataclass(frozen=True)
class ReputationRule:
    """When accumulated screening evidence graylists a peer (``gossip.reputation_*``)."""

    min_refused: float = 3.0
    refused_fraction: float = 0.3
    half_life_s: float = 3600.0
    max_graylist_s: float = 86_400.0


#: Bound on the peers whose evidence is kept (the least recently judged are forgotten).
MAX_EVIDENCE = 4096


class PeerScores:
    """Per-peer scores, per-address rejection rates, and the resulting graylist."""

    def __init__(self, threshold: float = -20.0, graylist_s: float = 300.0,
                 decay_per_s: float = 0.05, addr_rate: int = 200, addr_window_s: float = 5.0,
                 addr_graylist_s: float = 60.0,
                 reputation: ReputationRule | None = None) -> None:  # fmt: skip
        self.threshold = threshold
        self.reputation = reputation
        self._evidence: dict[bytes, Evidence] = {}
        self.graylist_s = graylist_s
        self.decay_per_s = decay_per_s
        self.addr_rate = addr_rate
        self.addr_window_s = addr_window_s
        self.addr_graylist_s = addr_graylist_s
        self._score: dict[bytes, tuple[float, float]] = {}  # peer → (score, at)
        self._peer_until: dict[bytes, float] = {}
        self._addr: dict[str, _Addr] = {}
        self._addr_until: dict[str, float] = {}

    def score(self, peer: bytes, now: float) -> float:
        """Current (decayed) score; 0 is neutral, negative is bad."""
        s, at = self._score.get(peer, (0.0, now))
        if s < 0:
            s = min(0.0, s + self.decay_per_s * (now - at))
        return s

    def penalize(self, peer: bytes, reason: str, now: float) -> bool:
        """Lower the score; True when this graylists the peer."""
        s = self.score(peer, now) - PENALTIES.get(reason, 1.0)
        self._score[peer] = (s, now)
        if s <= self.threshold and not self.is_graylisted(peer, now):
            self._peer_until[peer] = now + self.graylist_s
            return True
        return False

    def observe(self, peer: bytes, refused: bool, now: float) -> bool:
        """Record that the screens judged one of ``peer``'s models (and whether they refused
        it); True when this graylists the peer. Without a :class:`ReputationRule`, nothing."""
        rule = self.reputation
        if rule is None:
            return False
        e = self._evidence.pop(peer, None) or Evidence(at=now)
        self._evidence[peer] = e  # most recently judged last: eviction takes the oldest
        keep = 0.5 ** (max(0.0, now - e.at) / rule.half_life_s)
        e.judged, e.refused, e.at = e.judged * keep + 1.0, e.refused * keep + refused, now
        if len(self._evidence) > MAX_EVIDENCE:
            self._evidence.pop(next(iter(self._evidence)))
        if (
            not refused
            or e.refused + 0.5 < rule.min_refused  # to the nearest whole (older weigh less)
            or e.refused < rule.refused_fraction * e.judged
            or self.is_graylisted(peer, now)
        ):
            return False
        e.offences += 1
        term = min(self.graylist_s * 2.0 ** (e.offences - 1), rule.max_graylist_s)
        self._peer_until[peer] = now + term
        return True

    def evidence(self, peer: bytes) -> Evidence | None:
        """The screening record of ``peer`` (None if never judged)."""
        return self._evidence.get(peer)

    def reward(self, peer: bytes, now: float, amount: float = 0.2) -> None:
        """A useful message nudges the score back up (capped at 0)."""
        self._score[peer] = (min(0.0, self.score(peer, now) + amount), now)

    def is_graylisted(self, peer: bytes, now: float) -> bool:
        """Whether messages from ``peer`` are dropped now."""
        return self._peer_until.get(peer, -1.0) > now

    def graylist_terms(self) -> dict[bytes, float]:
        """Every peer graylisted since the node started (or resumed), with when its current
        or last term ends."""
        return dict(self._peer_until)

    def graylisted(self, now: float) -> list[bytes]:
        """Peers graylisted now."""
        return sorted(p for p, t in self._peer_until.items() if t > now)

    def addr_rejected(self, addr: str, now: float) -> bool:
        """Count an unauthenticated rejection; True when this graylists the address."""
        a = self._addr.setdefault(addr, _Addr())
        a.times.append(now)
        while a.times and a.times[0] < now - self.addr_window_s:
            a.times.popleft()
        if len(a.times) >= self.addr_rate and not self.addr_graylisted(addr, now):
            self._addr_until[addr] = now + self.addr_graylist_s
            a.times.clear()
            return True
        if len(self._addr) > 10_000:  # bound memory under address-spoofing floods
            self._addr.clear()
        return False

    def addr_graylisted(self, addr: str, now: float) -> bool:
        """Whether datagrams from ``addr`` are dropped unread now."""
        return self._addr_until.get(addr, -1.0) > now

    def to_state(self) -> dict[str, Any]:
        """Everything that decides future penalties, as plain msgpack-able values (the
        per-address flood windows are seconds long and are not kept)."""
        return {
            "score": [[p, s, at] for p, (s, at) in sorted(self._score.items())],
            "peer_until": [[p, t] for p, t in sorted(self._peer_until.items())],
            "addr_until": [[a, t] for a, t in sorted(self._addr_until.items())],
            # In eviction order (not sorted): which peer is forgotten next must survive too.
            "evidence": [
                [p, e.judged, e.refused, e.at, e.offences] for p, e in self._evidence.items()
            ],
        }

    def load_state(self, doc: dict[str, Any]) -> None:
        """Restore :meth:`to_state` (values are type-checked; a bad entry raises ValueError)."""
        self._score = {_peer(p): (float(s), float(at)) for p, s, at in doc.get("score", [])}
        self._peer_until = {_peer(p): float(t) for p, t in doc.get("peer_until", [])}
        self._addr_until = {str(a): float(t) for a, t in doc.get("addr_until", [])}
        self._evidence = {
            _peer(p): Evidence(float(j), float(r), float(at), int(n))
            for p, j, r, at, n in doc.get("evidence", [])
        }

    def graylisted_addrs(self, now: float) -> list[str]:
        """Addresses graylisted now."""
        return sorted(a for a, t in self._addr_until.items() if t > now)


def _peer(p: object) -> bytes:
    if not isinstance(p, bytes) or not 0 < len(p) <= 64:
        raise ValueError("a peer id in the saved scores is not a short byte string")
    return p
