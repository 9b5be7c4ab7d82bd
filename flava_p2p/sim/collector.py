"""CPython's cyclic garbage collector, paused while a simulation runs.

A simulated network is millions of long-lived objects (nodes, views, keys, replay windows) that
make almost no cyclic garbage: protocol_10k's collections found nothing at all, yet the
generational collector kept traversing the growing heap, ~16% of that run's wall time.
Reference counting still frees everything at once; what the run builds before it starts is
frozen out of the collections that remain, and collections between measurements (spread out
while they find nothing, :class:`Between`) bound how long a cycle can hold memory.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def pause() -> bool:
    """Freeze what exists and stop automatic collections; False if they were already off."""
    if not gc.isenabled():
        return False
    gc.collect()
    gc.freeze()
    gc.disable()
    return True


def resume() -> None:
    """Undo :func:`pause`: everything collectable again, automatic collections on."""
    gc.unfreeze()
    gc.enable()


class Between:
    """The collections between measurements, spread out while they find nothing.

    A full collection costs time in proportion to the heap (0.3–1.0 s for 10,000 nodes), and
    in every run measured so far it found nothing; so after an empty one the next waits twice
    as many measurements, up to ``max_gap``, and any find brings it back to every measurement.
    """

    def __init__(self, max_gap: int = 8) -> None:
        self.max_gap = max_gap
        self._gap = 1
        self._wait = 0

    def at_measurement(self) -> int:
        """Collect if due; returns the objects found (0 when skipped)."""
        if self._wait > 0:
            self._wait -= 1
            return 0
        found = gc.collect()
        self._gap = 1 if found else min(2 * self._gap, self.max_gap)
        self._wait = self._gap - 1
        return found


@contextmanager
def paused() -> Iterator[None]:
    """:func:`pause` for the ``with`` block, restoring the collector's state after it."""
    paused_here = pause()
    try:
        yield
    finally:
        if paused_here:
            resume()
