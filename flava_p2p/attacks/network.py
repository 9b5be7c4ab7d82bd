"""Network attacks of a Byzantine node, sans I/O: one definition for real nodes and simulations.

``replay`` re-sends datagrams the node itself sent earlier, verbatim (signed and fresh once; the
receivers' replay windows must reject them). ``garbage`` sends random bytes. ``flood`` sends
bursts of random bytes as fast as the rate allows. Each firing goes to peers the attacker knows
(its view). The driver (``runtime/driver.py``) and the simulator (``sim/runner.py``) both ask a
:class:`NetworkAttacker` when to fire next and what to send, then carry it out on their own
transport and clock.

Parameters (``--attack NAME:rate=R``): ``rate`` firings per second (default 20); a flood firing
is a burst of :data:`FLOOD_BURST` datagrams.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from flava_p2p.attacks import AttackSpec

Addr = tuple[str, int]

DEFAULT_RATE = 20.0
FLOOD_BURST = 50
REPLAY_MEMORY = 64
MAX_GARBAGE = 1200


@dataclass
class NetworkAttacker:
    """When to fire and what to send, for one node running a network attack."""

    spec: AttackSpec
    rng: np.random.Generator
    sent: deque[tuple[Addr, bytes]] = field(default_factory=lambda: deque(maxlen=REPLAY_MEMORY))
    fired: int = 0

    @property
    def rate(self) -> float:
        """Firings per second."""
        return max(1e-3, float(self.spec.params.get("rate", DEFAULT_RATE)))

    def remember(self, addr: Addr, datagram: bytes) -> None:
        """Record a datagram this node sent honestly (what ``replay`` re-sends)."""
        self.sent.append((addr, datagram))

    def next_delay(self) -> float:
        """Seconds until the next firing (exponential gaps: a Poisson process at ``rate``)."""
        return float(self.rng.exponential(1.0 / self.rate))

    def fire(self, targets: list[Addr]) -> list[tuple[Addr, bytes]]:
        """The datagrams of one firing, as (destination, bytes)."""
        self.fired += 1
        name = self.spec.name
        if name == "replay":
            if not self.sent:
                return []
            return [self.sent[int(self.rng.integers(len(self.sent)))]]
        if not targets:
            return []
        count = FLOOD_BURST if name == "flood" else 1
        return [
            (
                targets[int(self.rng.integers(len(targets)))],
                self.rng.bytes(int(self.rng.integers(1, MAX_GARBAGE + 1))),
            )
            for _ in range(count)
        ]
