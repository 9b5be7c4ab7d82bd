"""CPython's cyclic garbage collector, paused while a simulation runs.

A simulated network is millions of long-lived objects (nodes, views, keys, replay windows) that
make almost no cyclic garbage: protocol_10k's collections found nothing at all, yet the
generational collector kept traversing the growing heap, ~16% of that run's wall time.
Reference counting still frees everything at once; what the run builds before it starts is
frozen out of the collections that remain, and one collection at each measurement bounds what
a cycle could hold to one measurement interval.
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


def collect() -> int:
    """One collection, between measurements (the objects it found)."""
    return gc.collect()


@contextmanager
def paused() -> Iterator[None]:
    """:func:`pause` for the ``with`` block, restoring the collector's state after it."""
    paused_here = pause()
    try:
        yield
    finally:
        if paused_here:
            resume()
