"""In-memory datagram network on a virtual clock, driving real :class:`NodeCore` instances.

Like trio's FakeNet: no sockets, a seeded RNG decides latency and loss, and time jumps straight
to the next event, so a run is fast and reproducible bit for bit. Training is delegated to a
``learner`` callback so the same network serves protocol tests (toy learners) and the
simulator (real DP-SGD learners).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flava_p2p.protocol.node import Addr, Event, NodeCore, TrainRequest
from flava_p2p.wire.messages import DpInfo

Vec = npt.NDArray[np.float32]
#: learner(node_index, model_after_merge) -> (trained model, sample count, dp info)
Learner = Callable[[int, Vec], tuple[Vec, int, DpInfo]]


@dataclass
class LinkModel:
    """Per-datagram latency (uniform in [lo, hi] seconds) and independent loss."""

    latency: tuple[float, float] = (0.005, 0.03)
    loss: float = 0.0


@dataclass
class VirtualNetwork:
    """Nodes at addresses ``10.0.0.<i>:7000`` exchanging datagrams through a priority queue."""

    link: LinkModel = field(default_factory=LinkModel)
    seed: int = 0
    nodes: list[NodeCore] = field(default_factory=list)
    learner: Learner | None = None
    now: float = 0.0
    down: set[int] = field(default_factory=set)
    """Indices of crashed/partitioned nodes: they neither send nor receive."""
    delivered: int = 0
    dropped: int = 0
    events: list[tuple[float, int, Event]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._queue: list[tuple[float, int, str, int, tuple[Addr, bytes]]] = []
        self._tie = itertools.count()

    @staticmethod
    def address(i: int) -> Addr:
        """The virtual address of node ``i``."""
        return (f"10.0.{i // 250}.{i % 250 + 1}", 7000)

    def index_of(self, addr: Addr) -> int:
        """Inverse of :meth:`address` (-1 for an address outside the network)."""
        parts = addr[0].split(".")
        if len(parts) != 4 or parts[:2] != ["10", "0"] or not all(p.isdigit() for p in parts):
            return -1
        return int(parts[2]) * 250 + int(parts[3]) - 1

    def add(self, node: NodeCore) -> int:
        """Register a node (its index decides its address); returns the index."""
        self.nodes.append(node)
        return len(self.nodes) - 1

    def start(self) -> None:
        """Start every node at the current time."""
        for i, node in enumerate(self.nodes):
            node.start(self.now)
            self._after(i)

    def inject(self, addr: Addr, dst: int, datagram: bytes, delay: float = 0.0) -> None:
        """Deliver a raw datagram from ``addr`` to node ``dst`` (faults, attackers)."""
        heapq.heappush(
            self._queue, (self.now + delay, next(self._tie), "rx", dst, (addr, datagram))
        )

    def run_until(self, t_end: float) -> None:
        """Process events until virtual time ``t_end``."""
        while True:
            timer_i, timer_t = self._earliest_timer()
            queue_t = self._queue[0][0] if self._queue else float("inf")
            t = min(timer_t, queue_t)
            if t > t_end:
                break
            self.now = t
            if queue_t <= timer_t:
                _, _, _, dst, payload = heapq.heappop(self._queue)
                if dst in self.down:
                    self.dropped += 1
                    continue
                addr, datagram = payload
                self.nodes[dst].receive(datagram, addr, t)
                self.delivered += 1
                self._after(dst)
            else:
                self.nodes[timer_i].timer(t)
                self._after(timer_i)
        self.now = t_end

    def _earliest_timer(self) -> tuple[int, float]:
        best_i, best_t = -1, float("inf")
        for i, node in enumerate(self.nodes):
            if i in self.down:
                continue
            t = node.next_deadline()
            if t < best_t:
                best_i, best_t = i, t
        return best_i, best_t

    def _after(self, i: int) -> None:
        """Route node i's outputs: datagrams into the queue, training requests to the learner."""
        node = self.nodes[i]
        for ev in node.events():
            self.events.append((self.now, i, ev))
            if isinstance(ev, TrainRequest):
                model = node.model
                if self.learner is not None:
                    trained, samples, dp = self.learner(i, model)
                else:
                    trained, samples, dp = model, 1, DpInfo(None, None)
                node.local_update(trained, samples, dp, self.now)
        src = self.address(i)
        for send in node.datagrams_to_send():
            dst = self.index_of(send.addr)
            if (
                i in self.down
                or not 0 <= dst < len(self.nodes)
                or self.rng.random() < self.link.loss
            ):
                self.dropped += 1
                continue
            delay = self.rng.uniform(*self.link.latency)
            heapq.heappush(
                self._queue, (self.now + delay, next(self._tie), "rx", dst, (src, send.datagram))
            )
