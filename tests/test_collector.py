"""The simulator pauses CPython's cyclic collector during a run and gives it back afterwards."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from flava_p2p.sim import collector
from flava_p2p.sim.runner import Simulation
from flava_p2p.testing.scenarios import small_scenario


def test_run_pauses_the_collector_and_restores_it() -> None:
    seen: list[tuple[bool, int]] = []

    def progress(t: float, horizon: float, rec: dict[str, Any]) -> None:
        seen.append((gc.isenabled(), gc.get_freeze_count()))

    assert gc.isenabled()
    summary = Simulation(small_scenario(nodes=6, rounds=3)).run(progress=progress)
    assert summary["final"]["delivered"] > 0
    assert len(seen) == 3
    assert all(not enabled and frozen > 0 for enabled, frozen in seen)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_paused_restores_on_error_and_leaves_a_disabled_collector_alone() -> None:
    with pytest.raises(RuntimeError), collector.paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled()  # the caller turned it off: not ours to turn on
    finally:
        gc.enable()


def test_collections_between_measurements_still_free_cycles() -> None:
    class Node:
        other: Node | None = None

    with collector.paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert collector.collect() >= 2
