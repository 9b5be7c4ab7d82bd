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


class _Node:
    other: _Node | None = None


def _make_cycle() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a


def test_collections_between_measurements_space_out_and_still_free_cycles() -> None:
    runs: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            runs.append(info["collected"])

    between = collector.Between(max_gap=4)
    with collector.paused():
        gc.callbacks.append(seen)
        try:
            collected_at = []
            for measurement in range(1, 12):
                before = len(runs)
                between.at_measurement()
                if len(runs) > before:
                    collected_at.append(measurement)
            # Empty collections space out: gaps of 2, then 4 (max_gap).
            assert collected_at == [1, 3, 7, 11]
            _make_cycle()  # garbage right after a collection: found within max_gap measurements
            found = [between.at_measurement() for _ in range(4)]
            assert found[:3] == [0, 0, 0] and found[3] >= 2
            _make_cycle()  # after a find, the very next measurement collects
            assert between.at_measurement() >= 2
        finally:
            gc.callbacks.remove(seen)
