"""The exact driver of a NodeCore: every input → core → events → transmit → re-arm ONE timer.

aioquic's asyncio adapter in miniature. The core says when it next needs ``timer(now)``
(``next_deadline``); after every datagram, training result or timer firing this loop drains
the core's events and datagrams and re-arms a single timer for exactly that deadline — so a
NACK due 50 ms after a fragment leaves at 50 ms, not at the next poll.

Clock and transport are injected: the asyncio node passes :class:`AsyncioScheduler` (wall-clock
``now``, ``loop.call_at``) and a UDP transport's ``sendto``; tests pass a manual scheduler
(:mod:`flava_p2p.testing.clock`) and an in-memory network, and run the very same loop without
sockets, subprocesses or sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from flava_p2p.protocol.node import Addr, Event, NodeCore, Vec
from flava_p2p.wire.messages import DpInfo


class TimerHandle(Protocol):
    """What ``call_at`` returns: something that can be cancelled."""

    def cancel(self) -> None:
        """Do not run the callback."""
        ...


class Scheduler(Protocol):
    """Time for the core and one-shot callbacks at absolute times of that same clock."""

    def time(self) -> float:
        """Now, in the core's clock (seconds)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` at ``when`` (or as soon as possible if it has passed)."""
        ...


class AsyncioScheduler:
    """Wall-clock ``now`` (what peers' timestamps are checked against) on an asyncio loop.

    ``loop.call_at`` runs on the loop's monotonic clock; deadlines are translated at arming
    time, so a deadline ``d`` seconds away fires ``d`` seconds later.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def time(self) -> float:
        """Wall-clock seconds."""
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` at wall-clock ``when``."""
        delay = max(0.0, when - time.time())
        return self.loop.call_at(self.loop.time() + delay, callback)


SendFn = Callable[[bytes, Addr], None]


class CoreLoop:
    """Feeds one NodeCore and carries out what it asks for.

    ``on_event`` receives every core event (training requests, peer changes, …);
    ``before_transmit`` runs before each batch of datagrams leaves (the node persists its
    sequence-number reservation there, so no seqno is ever sent twice across a crash).
    """

    def __init__(
        self,
        core: NodeCore,
        scheduler: Scheduler,
        send: SendFn,
        on_event: Callable[[Event], None] = lambda ev: None,
        before_transmit: Callable[[], None] = lambda: None,
    ) -> None:
        self.core = core
        self.scheduler = scheduler
        self._send = send
        self._on_event = on_event
        self._before_transmit = before_transmit
        self._timer: TimerHandle | None = None
        self._armed_for: float | None = None
        self.stopped = False

    # ------------------------------------------------------------------ inputs
    def start(self) -> None:
        """Start the core's schedule now and arm the timer."""
        self.core.start(self.scheduler.time())
        self.pump()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        """One datagram from the network."""
        if self.stopped:
            return
        self.core.receive(data, addr, self.scheduler.time())
        self.pump()

    def local_update(self, model: Vec, samples: int, dp: DpInfo, base: Vec | None = None) -> None:
        """A training burst's result (gossiped to peers at once)."""
        if self.stopped:
            return
        self.core.local_update(
            np.asarray(model, dtype=np.float32), samples, dp, self.scheduler.time(), base=base
        )
        self.pump()

    def stop(self) -> None:
        """Cancel the timer; later inputs are ignored."""
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ outputs
    def pump(self) -> None:
        """Hand events out, transmit, re-arm the timer for the core's next deadline."""
        for ev in self.core.events():
            self._on_event(ev)
        sends = self.core.datagrams_to_send()
        if sends:
            self._before_transmit()
            for s in sends:
                self._send(s.datagram, s.addr)
        self._arm()

    def _arm(self) -> None:
        if self.stopped:
            return
        when = self.core.next_deadline()
        if self._timer is not None:
            if self._armed_for == when:
                return  # already armed for exactly this deadline
            self._timer.cancel()
        self._armed_for = when
        self._timer = self.scheduler.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = None
        if self.stopped:
            return
        self.core.timer(self.scheduler.time())
        self.pump()
