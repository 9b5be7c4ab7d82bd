"""In-memory datagram network on a virtual clock, driving real :class:`NodeCore` instances.

Like trio's FakeNet: no sockets, a seeded RNG decides what every link does, and time jumps
straight to the next event, so a run is fast and reproducible bit for bit. Training is delegated
to a ``learner`` callback so the same network serves protocol tests (toy learners) and the
simulator (real DP-SGD learners). What a link does to each datagram is a :class:`LinkBehaviour`:
:class:`LinkModel` here (latency + independent loss), ``sim.network_conditions`` for the full model.

Scaling: node timers live in a heap with lazy invalidation (a node's entry is re-pushed whenever
it is touched and stale entries are skipped), so one event costs O(log N), not O(N).

Partitions: the outcome never depends on how nodes are grouped into processes. Every link draws
from its sender's own RNG, and queued events are ordered by (time, node concerned, kind, origin
node, origin's counter) — keys that any process holding the origin node computes alike, instead
of a global insertion counter. A network may own only some nodes (``owned``); datagrams to the
others are collected in :attr:`remote` for the engine to deliver (sim/partitioned.py).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np
import numpy.typing as npt

from flava_p2p.protocol.node import Addr, Event, NodeCore, TrainRequest
from flava_p2p.wire.messages import DpInfo

Vec = npt.NDArray[np.float32]
#: (arrival time, destination, origin node, origin's counter, source address, datagram)
RemoteDatagram = tuple[float, int, int, int, Addr, bytes]
# Event kinds, in their order among one node's events at the same instant.
_DATAGRAM, _CALLBACK = 0, 1
#: learner(node_index, model_after_merge) -> (trained model, sample count, dp info)
Learner = Callable[[int, Vec], tuple[Vec, int, DpInfo]]
TrainResult = tuple[Vec, int, DpInfo]
#: batch_learner([(node_index, model), ...]) -> {node_index: result}
BatchLearner = Callable[[list[tuple[int, Vec]]], dict[int, TrainResult]]


class LinkBehaviour(Protocol):
    """Decides the fate of one datagram: the delays after which copies arrive (empty: lost)."""

    def transmit(
        self, src: int, dst: int, nbytes: int, now: float, rng: random.Random
    ) -> list[float]: ...


#: The one address of every node in ``VirtualNetwork.shared_host`` (one port each).
SHARED_HOST = "10.1.0.1"


@dataclass
class LinkModel:
    """Per-datagram latency (uniform in [lo, hi] seconds) and independent loss."""

    latency: tuple[float, float] = (0.005, 0.03)
    loss: float = 0.0

    def transmit(
        self, src: int, dst: int, nbytes: int, now: float, rng: random.Random
    ) -> list[float]:
        """One copy after a uniform delay, or none with probability ``loss``."""
        if rng.random() < self.loss:
            return []
        return [rng.uniform(*self.latency)]


@dataclass
class VirtualNetwork:
    """Nodes at addresses ``10.0.x.y:7000`` exchanging datagrams through a priority queue."""

    link: LinkBehaviour = field(default_factory=LinkModel)
    seed: int = 0
    nodes: list[NodeCore] = field(default_factory=list)
    learner: Learner | None = None
    now: float = 0.0
    down: set[int] = field(default_factory=set)
    """Indices of crashed nodes: they neither send nor receive nor run timers."""
    delivered: int = 0
    dropped: int = 0
    events: list[tuple[float, int, Event]] = field(default_factory=list)
    record_events: bool = True
    """Keep every node event in :attr:`events` (turn off for very large runs)."""
    on_event: Callable[[int, Event], None] | None = None
    train_delay: float = 0.0
    """Virtual seconds a training burst takes. 0: the learner runs inside the TrainRequest
    event. > 0: the node adopts the result ``train_delay`` later, and every burst requested
    before then is handed to ``batch_learner`` together, so they can run in parallel — their
    inputs were all fixed when they were requested."""
    batch_learner: BatchLearner | None = None
    on_send: Callable[[int, Addr, bytes], None] | None = None
    """Sees every datagram a node's core sends (not injected ones): network attackers
    remember their own traffic for ``replay``."""

    owned: set[int] | None = None
    """Nodes this network runs (None: all). Datagrams to others go to :attr:`remote`."""
    shared_host: frozenset[int] = frozenset()
    """Nodes that all live on one host, :data:`SHARED_HOST` (Sybil identities)."""

    def __post_init__(self) -> None:
        self._queue: list[tuple[float, int, int, int, int, object]] = []
        self._timers: list[tuple[float, int]] = []
        self._scheduled: list[float] = []
        self._link_rngs: dict[int, random.Random] = {}
        self._origin_seq: dict[int, int] = {}
        self._external = itertools.count()
        self.epsilon_reported: dict[int, float | None] = {}
        """Each node's example-level ε after its last finished training burst."""
        self.remote: list[RemoteDatagram] = []
        """Datagrams for nodes owned elsewhere, in send order (taken by the engine)."""
        self.bytes_sent: list[int] = []
        self.bytes_received: list[int] = []
        self.last_sent: list[tuple[int, bytes] | None] = []
        """Each node's most recent outgoing (destination, datagram), for replay faults."""
        self._generation: list[int] = []
        self._pending: dict[int, tuple[int, Vec]] = {}  # node → (generation, input model)
        self._results: dict[int, TrainResult] = {}

    # ------------------------------------------------------------------ addressing
    def address(self, i: int) -> Addr:
        """The virtual address of node ``i``: its own host, or a port on the shared host."""
        if i in self.shared_host:
            return (SHARED_HOST, 7000 + i)
        return (f"10.0.{i // 250}.{i % 250 + 1}", 7000)

    def index_of(self, addr: Addr) -> int:
        """Inverse of :meth:`address` (-1 for an address outside the network)."""
        if addr[0] == SHARED_HOST:
            i = addr[1] - 7000
            return i if i in self.shared_host else -1
        parts = addr[0].split(".")
        if len(parts) != 4 or parts[:2] != ["10", "0"] or not all(p.isdigit() for p in parts):
            return -1
        return int(parts[2]) * 250 + int(parts[3]) - 1

    # ------------------------------------------------------------------ lifecycle
    def add(self, node: NodeCore | None) -> int:
        """Register a node (its index decides its address); returns the index. ``None``: a
        node another partition owns (never touched here)."""
        self.nodes.append(node)  # type: ignore[arg-type]
        self._scheduled.append(float("nan"))
        self.bytes_sent.append(0)
        self.bytes_received.append(0)
        self.last_sent.append(None)
        self._generation.append(0)
        return len(self.nodes) - 1

    def start(self) -> None:
        """Start every node that is up at the current time."""
        for i, node in enumerate(self.nodes):
            if i not in self.down and self.runs(i):
                node.start(self.now)
                self._after(i)

    def set_node(self, i: int, node: NodeCore) -> None:
        """Replace node ``i`` (a restart after churn); it starts now unless it is down."""
        self.nodes[i] = node
        self._scheduled[i] = float("nan")
        self._generation[i] += 1  # a burst started by the previous incarnation is void
        if i not in self.down:
            node.start(self.now)
            self._after(i)

    def set_down(self, i: int, down: bool) -> None:
        """Crash (``True``) or revive node ``i``; a revived node's timers resume."""
        if down:
            self.down.add(i)
        elif i in self.down:
            self.down.discard(i)
            self._scheduled[i] = float("nan")
            self._after(i)

    def runs(self, i: int) -> bool:
        """Whether node ``i`` is simulated by this network (not by another partition)."""
        return self.owned is None or i in self.owned

    def link_rng(self, i: int) -> random.Random:
        """Node ``i``'s link RNG: what happens to its datagrams depends on nothing else."""
        rng = self._link_rngs.get(i)
        if rng is None:
            rng = self._link_rngs[i] = random.Random(f"{self.seed}/links/{i}")
        return rng

    # ------------------------------------------------------------------ scheduling
    def inject(self, addr: Addr, dst: int, datagram: bytes, delay: float = 0.0) -> None:
        """Deliver a raw datagram from ``addr`` to node ``dst`` (faults, attackers)."""
        self._push(self.now + delay, dst, _DATAGRAM, -1, next(self._external), (addr, datagram))

    def call_at(self, t: float, fn: Callable[[], None], node: int = -1) -> None:
        """Run ``fn`` at virtual time ``t`` (churn, faults, a burst's end). ``node``: the node
        it concerns (orders it among that node's events; -1 for network-wide ones)."""
        self._push(t, node, _CALLBACK, node, self._next_seq(node), fn)

    def _next_seq(self, origin: int) -> int:
        n = self._origin_seq.get(origin, 0)
        self._origin_seq[origin] = n + 1
        return n

    def _push(self, t: float, dst: int, kind: int, origin: int, seq: int, payload: object) -> None:
        heapq.heappush(self._queue, (t, dst, kind, origin, seq, payload))

    def deliver_remote(self, batch: list[RemoteDatagram]) -> None:
        """Queue datagrams another partition sent to nodes of this one."""
        for t, dst, origin, seq, src, datagram in batch:
            self._push(t, dst, _DATAGRAM, origin, seq, (src, datagram))

    def next_event_time(self) -> float:
        """When the next event happens here (inf: nothing scheduled)."""
        queue_t = self._queue[0][0] if self._queue else float("inf")
        return min(queue_t, self._next_timer())

    def run_until(self, t_end: float) -> None:
        """Process events until virtual time ``t_end``; datagrams before timers on ties."""
        while True:
            timer_t = self._next_timer()
            queue_t = self._queue[0][0] if self._queue else float("inf")
            t = min(timer_t, queue_t)
            if t > t_end:
                break
            if t < self.now:  # an engine bug, not bad input: results would depend on it
                raise RuntimeError(f"virtual time went back from {self.now} to {t}")
            self.now = t
            if queue_t <= timer_t:
                _, dst, kind, _, _, payload = heapq.heappop(self._queue)
                if kind == _CALLBACK:
                    payload()  # type: ignore[operator]
                    continue
                if dst in self.down:
                    self.dropped += 1
                    continue
                addr: Addr
                datagram: bytes
                addr, datagram = payload  # type: ignore[misc]
                self.bytes_received[dst] += len(datagram)
                self.nodes[dst].receive(datagram, addr, t)
                self.delivered += 1
                self._after(dst)
            else:
                _, i = heapq.heappop(self._timers)
                self._scheduled[i] = float("nan")
                self.nodes[i].timer(t)
                self._after(i)
        self.now = t_end

    def _next_timer(self) -> float:
        """Earliest valid timer, discarding stale heap entries."""
        while self._timers:
            t, i = self._timers[0]
            if i not in self.down and self._scheduled[i] == t:
                return t
            heapq.heappop(self._timers)
        return float("inf")

    def _after(self, i: int) -> None:
        """Route node i's outputs: training requests to the learner, datagrams into links."""
        node = self.nodes[i]
        for ev in node.events():
            if self.record_events:
                self.events.append((self.now, i, ev))
            if self.on_event is not None:
                self.on_event(i, ev)
            if isinstance(ev, TrainRequest):
                if self.train_delay > 0:
                    if i in self._pending:
                        continue  # still busy with the previous burst: this round skips it
                    self._pending[i] = (self._generation[i], node.model.copy())
                    self.call_at(self.now + self.train_delay, partial(self._train_done, i), i)
                    continue
                trained, samples, dp = self._train_now(i, node.model)
                self.epsilon_reported[i] = dp.example_epsilon
                node.local_update(trained, samples, dp, self.now)
        src = self.address(i)
        for send in node.datagrams_to_send():
            if self.on_send is not None:
                self.on_send(i, send.addr, send.datagram)
            self.send_from(i, src, send.addr, send.datagram)
        if i not in self.down:
            # A deadline can fall behind the clock (a new RTT sample shortens the timeout of a
            # probe already out): it is due now, as a real event loop would run it, never in
            # the past — time going backwards would reorder this node against the others.
            deadline = max(node.next_deadline(), self.now)
            if deadline != self._scheduled[i]:
                self._scheduled[i] = deadline
                heapq.heappush(self._timers, (deadline, i))

    def _train_now(self, i: int, model: Vec) -> TrainResult:
        if self.learner is not None:
            return self.learner(i, model)
        return model, 1, DpInfo(None, None)

    def _train_done(self, i: int) -> None:
        """Node i's burst finishes now; run every burst requested so far that has no result."""
        gen, base = self._pending[i]
        if i not in self._results:
            jobs = [(j, m) for j, (_, m) in sorted(self._pending.items()) if j not in self._results]
            if self.batch_learner is not None:
                self._results.update(self.batch_learner(jobs))
            else:
                self._results.update({j: self._train_now(j, m) for j, m in jobs})
        del self._pending[i]
        trained, samples, dp = self._results.pop(i)
        # The burst's ε counts from its end: when the batch that computed it ran depends on
        # which other nodes share the process, its end does not.
        self.epsilon_reported[i] = dp.example_epsilon
        if i in self.down or gen != self._generation[i]:
            return  # crashed or restarted mid-burst: the result is lost (the ε is not)
        self.nodes[i].local_update(trained, samples, dp, self.now, base=base)
        self._after(i)

    def send_from(self, i: int, src: Addr, dst_addr: Addr, datagram: bytes) -> None:
        """Put one datagram from node ``i`` on the link to ``dst_addr`` (a multicast group
        address reaches every other node, each over its own link, like a LAN)."""
        rng = self.link_rng(i)
        if _is_multicast(dst_addr[0]):
            if i in self.down:
                return
            self.bytes_sent[i] += len(datagram)
            for dst in range(len(self.nodes)):
                if dst != i:
                    for delay in self.link.transmit(i, dst, len(datagram), self.now, rng):
                        self._route(self.now + delay, dst, i, src, datagram)
            return
        dst = self.index_of(dst_addr)
        if i in self.down or not 0 <= dst < len(self.nodes):
            self.dropped += 1
            return
        self.bytes_sent[i] += len(datagram)
        self.last_sent[i] = (dst, datagram)
        delays = self.link.transmit(i, dst, len(datagram), self.now, rng)
        if not delays:
            self.dropped += 1
        for delay in delays:
            self._route(self.now + delay, dst, i, src, datagram)

    def _route(self, t: float, dst: int, origin: int, src: Addr, datagram: bytes) -> None:
        seq = self._next_seq(origin)
        if self.runs(dst):
            self._push(t, dst, _DATAGRAM, origin, seq, (src, datagram))
        else:
            self.remote.append((t, dst, origin, seq, src, datagram))


# Asked for every datagram sent. 4,096 entries thrashed at 10,000 nodes (each its own host):
# ~9 of 10 sends parsed the address again, 1.2% of protocol_10k's wall.
@functools.lru_cache(maxsize=1 << 17)
def _is_multicast(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False
