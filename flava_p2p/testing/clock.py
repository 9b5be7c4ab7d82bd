"""A manual clock for driving runtime code deterministically (trio's MockClock, in small).

``ManualScheduler`` implements the runtime's ``Scheduler``: ``call_at`` queues callbacks, and
``run_until(t)`` / ``advance(dt)`` run them in time order, setting ``time()`` to each one's
due time exactly. Nothing sleeps; a test of timer behaviour takes microseconds.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Entry:
    when: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """Virtual time that only moves when the test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._queue: list[_Entry] = []
        self._order = itertools.count()

    def time(self) -> float:
        """The current virtual time."""
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Entry:
        """Queue ``callback`` for virtual time ``when`` (past times run next)."""
        entry = _Entry(max(when, self.now), next(self._order), callback)
        heapq.heappush(self._queue, entry)
        return entry

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Entry:
        """Queue ``callback`` ``delay`` seconds from now."""
        return self.call_at(self.now + delay, callback)

    def run_until(self, until: float) -> None:
        """Run every callback due up to ``until`` in order, then set the time to ``until``."""
        while self._queue and self._queue[0].when <= until:
            entry = heapq.heappop(self._queue)
            if entry.cancelled:
                continue
            self.now = entry.when
            entry.callback()
        self.now = max(self.now, until)

    def advance(self, seconds: float) -> None:
        """``run_until(now + seconds)``."""
        self.run_until(self.now + seconds)

    def pending(self) -> int:
        """Callbacks still queued (cancelled ones excluded)."""
        return sum(1 for e in self._queue if not e.cancelled)
