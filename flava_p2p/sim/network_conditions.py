"""The simulator's network model: latency, bandwidth, loss (independent and bursty),
duplication, reordering, scheduled partitions, and churn schedules.

Everything is drawn from the ``random.Random`` the event loop passes in, in event order, so a
run with the same seed makes the same choices.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flava_p2p.errors import FlavaError
from flava_p2p.sim.scenario import Churn, Dist, NetworkModel


def _lognormal(d: Dist, rng: random.Random) -> float:
    if d.mean <= 0:
        return 0.0
    # Parameters of the underlying normal from the wanted mean and sd.
    s2 = math.log(1 + (d.sd / d.mean) ** 2)
    return rng.lognormvariate(math.log(d.mean) - s2 / 2, math.sqrt(s2))


_SAMPLERS: dict[str, Callable[[Dist, random.Random], float]] = {
    "constant": lambda d, rng: d.mean,
    "uniform": lambda d, rng: rng.uniform(d.low, max(d.low, d.high)),
    "exponential": lambda d, rng: rng.expovariate(1.0 / d.mean) if d.mean > 0 else 0.0,
    "normal": lambda d, rng: max(0.0, rng.gauss(d.mean, d.sd)),
    "lognormal": _lognormal,
    # weibull with mean m and shape k: scale = m / Γ(1 + 1/k)
    "weibull": lambda d, rng: rng.weibullvariate(d.mean / math.gamma(1 + 1 / d.shape), d.shape),
}


def draw(d: Dist, rng: random.Random) -> float:
    """One non-negative sample from ``d`` (seconds)."""
    return _SAMPLERS[d.dist](d, rng)


@dataclass
class SimLinks:
    """:class:`~flava_p2p.sim.network.LinkBehaviour` implementing a :class:`NetworkModel`."""

    model: NetworkModel
    n_nodes: int
    partition_groups: list[tuple[float, float, dict[int, int]]] = field(default_factory=list)
    """(at, heal, node → group) for every scheduled partition."""

    def __post_init__(self) -> None:
        self._uplink_free: dict[int, float] = {}
        self._bad: set[tuple[int, int]] = set()

    @classmethod
    def build(cls, model: NetworkModel, n_nodes: int, seed: int) -> SimLinks:
        """Resolve partition memberships (``fraction`` ones are seeded)."""
        rng = random.Random(seed ^ 0x5EED)
        groups = []
        for part in model.partitions:
            member: dict[int, int] = {}
            if part.groups is not None:
                for g, nodes in enumerate(part.groups):
                    for i in nodes:
                        member[i] = g
                rest = len(part.groups)
            else:
                assert part.fraction is not None
                side = rng.sample(range(n_nodes), max(1, round(part.fraction * n_nodes)))
                member = dict.fromkeys(side, 0)
                rest = 1
            full = {i: member.get(i, rest) for i in range(n_nodes)}
            groups.append((part.at, part.heal, full))
        return cls(model, n_nodes, groups)

    def connected(self, src: int, dst: int, now: float) -> bool:
        """False while a partition separates ``src`` and ``dst``."""
        for at, heal, member in self.partition_groups:
            if at <= now < heal and member.get(src, -1) != member.get(dst, -1):
                return False
        return True

    def transmit(
        self, src: int, dst: int, nbytes: int, now: float, rng: random.Random
    ) -> list[float]:
        """Delays after which copies of this datagram arrive (empty: lost)."""
        m = self.model
        inside = 0 <= src < self.n_nodes and 0 <= dst < self.n_nodes
        if inside and not self.connected(src, dst, now):
            return []
        # Serialisation on the sender's uplink: datagrams queue behind each other.
        wait = 0.0
        if m.bandwidth_bps is not None:
            start = max(now, self._uplink_free.get(src, 0.0))
            done = start + nbytes * 8 / m.bandwidth_bps
            self._uplink_free[src] = done
            wait = done - now
        if m.loss and rng.random() < m.loss:
            return []
        if m.burst is not None and self._burst_lost((src, dst), rng):
            return []
        delay = wait + max(m.min_latency_s, draw(m.latency, rng))
        if m.reorder and rng.random() < m.reorder:
            delay += draw(m.reorder_delay, rng)
        out = [delay]
        if m.duplicate and rng.random() < m.duplicate:
            out.append(delay + max(m.min_latency_s, draw(m.latency, rng)))
        return out

    def _burst_lost(self, link: tuple[int, int], rng: random.Random) -> bool:
        """Gilbert–Elliott: advance this link's two-state chain, lose with the state's rate."""
        b = self.model.burst
        assert b is not None
        if link in self._bad:
            if rng.random() < b.p_bad_to_good:
                self._bad.discard(link)
        elif rng.random() < b.p_good_to_bad:
            self._bad.add(link)
        return link in self._bad and rng.random() < b.loss_in_bad


def churn_schedule(
    churn: Churn, nodes: list[int], horizon: float, seed: int
) -> list[tuple[float, int, bool]]:
    """(time, node, up?) transitions until ``horizon``, sorted; nodes start online."""
    if churn.trace is not None:
        return _read_trace(Path(churn.trace), set(nodes))
    rng = random.Random(seed ^ 0xC4A2)
    chosen = sorted(rng.sample(nodes, round(churn.fraction * len(nodes)))) if nodes else []
    out: list[tuple[float, int, bool]] = []
    for i in chosen:
        t = draw(churn.session, rng)
        while t < horizon:
            out.append((t, i, False))
            t += max(draw(churn.downtime, rng), 1e-3)
            if t >= horizon:
                break
            out.append((t, i, True))
            t += max(draw(churn.session, rng), 1e-3)
    return sorted(out, key=lambda e: (e[0], e[1]))


def _read_trace(path: Path, valid: set[int]) -> list[tuple[float, int, bool]]:
    """``node,down_at,up_at`` rows (header optional; ``up_at`` empty = never returns)."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except OSError as exc:
        raise FlavaError(f"churn trace {path}: cannot read ({exc}).") from None
    out: list[tuple[float, int, bool]] = []
    for n, row in enumerate(rows, 1):
        if not row or row[0].strip().lower() in ("node", "") or row[0].startswith("#"):
            continue
        try:
            node, down = int(row[0]), float(row[1])
            up = float(row[2]) if len(row) > 2 and row[2].strip() else None
        except (ValueError, IndexError):
            raise FlavaError(
                f"churn trace {path}, line {n}: expected `node,down_at,up_at` numbers, got {row}."
            ) from None
        if node not in valid:
            raise FlavaError(
                f"churn trace {path}, line {n}: node {node} is not an honest node index."
            )
        if up is not None and up <= down:
            raise FlavaError(f"churn trace {path}, line {n}: up_at must be after down_at.")
        out.append((down, node, False))
        if up is not None:
            out.append((up, node, True))
    return sorted(out, key=lambda e: (e[0], e[1]))
