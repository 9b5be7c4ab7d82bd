"""The runtime's CoreLoop on a manual clock and an in-memory network: exact timer behaviour."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flava_p2p.config import GossipConfig
from flava_p2p.identity import Identity
from flava_p2p.protocol.node import Addr, Event, NodeCore, TrainRequest
from flava_p2p.runtime.core_loop import CoreLoop
from flava_p2p.runtime.state import SEQ_BLOCK, NodeState
from flava_p2p.testing.clock import ManualScheduler
from flava_p2p.wire.endpoint import KIND_FRAGMENT, KIND_NACK
from flava_p2p.wire.messages import DpInfo

DIM = 3000  # fp16 deltas of 6 kB: five fragments at the default 1,200-byte MTU
GOSSIP = GossipConfig(period_s=1.0, shuffle_period_s=0.5, ping_period_s=0.3, view_size=8, fanout=1)
LATENCY = 0.010


@dataclass
class Net:
    """Two or more CoreLoops joined by links of fixed latency; a hook may drop datagrams."""

    clock: ManualScheduler
    loops: dict[Addr, CoreLoop] = field(default_factory=dict)
    sent: list[tuple[float, Addr, Addr, bytes]] = field(default_factory=list)
    delivered: list[tuple[float, Addr, Addr, bytes]] = field(default_factory=list)
    drop: set[int] = field(default_factory=set)
    """Indices (in ``sent`` order) of datagrams the network lost."""
    lose: Callable[[int, Addr, bytes], bool] = lambda index, src, datagram: False
    """Decides at send time whether the network loses a datagram."""

    def sender(self, src: Addr) -> object:
        def send(datagram: bytes, dst: Addr) -> None:
            index = len(self.sent)
            self.sent.append((self.clock.time(), src, dst, datagram))
            if self.lose(index, src, datagram):
                self.drop.add(index)
            if index in self.drop or dst not in self.loops:
                return

            def deliver() -> None:
                self.delivered.append((self.clock.time(), src, dst, datagram))
                self.loops[dst].datagram_received(datagram, src)

            self.clock.call_later(LATENCY, deliver)

        return send


def node(i: int, net: Net, bootstrap: list[Addr]) -> CoreLoop:
    addr = (f"10.0.0.{i + 1}", 7000)
    core = NodeCore(
        Identity.from_seed(bytes([42, i]) * 16),
        network_id="t",
        genesis=np.zeros(DIM, np.float32),
        schema=b"s" * 32,
        gossip=GOSSIP,
        rng=random.Random(i),
        bootstrap=bootstrap,
    )
    rng = np.random.default_rng(i)

    def on_event(ev: Event) -> None:
        if isinstance(ev, TrainRequest):  # "training" takes 0.2 s and moves the model

            def done() -> None:
                update = rng.normal(0, 0.1, DIM).astype(np.float32)
                loop.local_update(core.model + update, 10, DpInfo(None, None))

            net.clock.call_later(0.2, done)

    loop = CoreLoop(core, net.clock, net.sender(addr), on_event)  # type: ignore[arg-type]
    net.loops[addr] = loop
    return loop


class TestCoreLoop:
    def test_nack_leaves_exactly_when_due(self) -> None:
        """One lost fragment of a delta: the receiver's NACK leaves within 1 ms (virtual) of
        its due time (last fragment + the reassembler's NACK delay), and the delta then
        completes: the single re-armed timer is exact, no polling."""
        clock = ManualScheduler()
        net = Net(clock)
        a = node(0, net, [])
        b = node(1, net, [("10.0.0.1", 7000)])
        a.start()
        b.start()
        clock.run_until(clock.time() + 1.0)  # discovery; no delta has been sent yet
        fragments_from_a: list[int] = []

        def lose_second_fragment(index: int, src: Addr, datagram: bytes) -> bool:
            """Lose the second fragment of the first multi-fragment message from A."""
            if src != ("10.0.0.1", 7000) or datagram[:1] != KIND_FRAGMENT:
                return False
            fragments_from_a.append(index)
            return len(fragments_from_a) == 2

        net.lose = lose_second_fragment
        clock.advance(4.0)
        assert net.drop, "A never sent a fragmented delta"
        lost = next(iter(net.drop))
        lost_seq = net.sent[lost][3][39:47]  # sender (38 bytes) after the kind byte, then seq
        to_b = [
            (t, d)
            for t, src, dst, d in net.delivered
            if dst == ("10.0.0.2", 7000) and d[:1] == KIND_FRAGMENT and d[39:47] == lost_seq
        ]
        nacks = [t for t, src, _, d in net.sent if src == ("10.0.0.2", 7000) and d[:1] == KIND_NACK]
        assert nacks, "B never sent a NACK"
        last_progress = max(t for t, _ in to_b if t <= nacks[0])  # before the repair arrives
        assert len([t for t, _ in to_b if t > nacks[0]]) >= 1  # A repaired the loss
        due = last_progress + b.core.wire.reassembler.nack_delay
        assert 0.0 <= nacks[0] - due <= 0.001
        assert b.core.counters.get("deltas_received", 0) >= 1

    def test_timer_is_re_armed_not_duplicated(self) -> None:
        """However many inputs arrive, at most one timer is pending per loop."""
        clock = ManualScheduler()
        net = Net(clock)
        a = node(0, net, [])
        b = node(1, net, [("10.0.0.1", 7000)])
        a.start()
        b.start()
        for _ in range(200):
            clock.advance(0.01)
            # one pending timer per loop, plus datagrams in flight and training callbacks
            in_flight = sum(1 for t, *_ in net.sent if t > clock.time() - LATENCY)
            assert clock.pending() <= 2 + in_flight + 2
        assert a.core.counters.get("deltas_received", 0) > 0
        a.stop()
        b.stop()
        before = len(net.sent)
        clock.advance(5.0)
        assert len(net.sent) - before <= 4  # only datagrams already in flight were answered


class TestSeqReservation:
    def test_reservation_is_on_disk_before_any_datagram_uses_it(self, tmp_path: Path) -> None:
        """Across more than two 1,000-seqno blocks, every datagram leaves only after the persisted
        reservation is above its seqno; a restart from the file never reuses one."""
        clock = ManualScheduler()
        net = Net(clock)
        a = node(0, net, [])
        b = node(1, net, [("10.0.0.1", 7000)])
        path = tmp_path / "state.msgpack"
        state = NodeState()
        b.core.wire.next_seq = 1  # a fresh node starts here

        def reserve() -> None:
            state.reserve_before_transmit(b.core.wire.next_seq, None, path)

        b._before_transmit = reserve
        inner = b._send
        checked = 0

        def guarded(datagram: bytes, addr: Addr) -> None:
            nonlocal checked
            on_disk = NodeState.load(path).seq_reserved
            assert b.core.wire.next_seq - 1 < on_disk  # every seqno used so far is reserved
            checked += 1
            inner(datagram, addr)

        b._send = guarded
        a.start()
        b.start()
        clock.advance(200.0)
        used = b.core.wire.next_seq - 1
        assert used > 2 * SEQ_BLOCK and checked > 2 * SEQ_BLOCK  # crossed two block edges
        # "kill -9" now: a restarted node resumes from the file, above every seqno ever used.
        resumed = NodeState.load(path).seq_reserved
        assert resumed > used
