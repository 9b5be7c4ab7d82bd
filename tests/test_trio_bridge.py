"""The trio↔asyncio bridge: results, errors, timeouts, cancellation both ways, clean shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from flava_p2p.runtime.trio_bridge import BridgeClosedError, TrioThread


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _add(a: int, b: int) -> int:
    await trio.sleep(0)
    return a + b


def _staller(
    cancelled: threading.Event, started: threading.Event | None = None
) -> Callable[[], Awaitable[None]]:
    """A trio coroutine function that sleeps 30 s and records that it was cancelled."""

    async def stall() -> None:
        if started is not None:
            started.set()
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            cancelled.set()
            raise

    return stall


async def _fail() -> None:
    await trio.sleep(0)
    raise ValueError("bad peer")


def test_results_and_errors_arrive_on_asyncio() -> None:
    async def main() -> None:
        bridge = TrioThread()
        bridge.start()
        try:
            assert await bridge.call(_add, 2, 3) == 5
            with pytest.raises(ValueError, match="bad peer"):
                await bridge.call(_fail)
            # the failure did not take the trio loop down: later calls still work
            assert await bridge.call(_add, 1, 1) == 2
            # the call ran in the trio thread, not the asyncio one
            names: list[str] = []

            async def where() -> None:
                names.append(threading.current_thread().name)

            await bridge.call(where)
            assert names == ["flava-trio"]
        finally:
            bridge.stop()

    _run(main())


def test_a_slow_call_times_out_and_is_cancelled_in_trio() -> None:
    async def main() -> None:
        bridge = TrioThread()
        bridge.start()
        cancelled = threading.Event()
        stall = _staller(cancelled)
        try:
            with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
                await bridge.call(stall, timeout=0.05)
            assert cancelled.wait(2.0)
        finally:
            bridge.stop()

    _run(main())


def test_cancelling_the_asyncio_side_cancels_the_trio_task() -> None:
    async def main() -> None:
        bridge = TrioThread()
        bridge.start()
        started, cancelled = threading.Event(), threading.Event()
        stall = _staller(cancelled, started)
        try:
            fut = bridge.call(stall)
            await asyncio.to_thread(started.wait, 2.0)
            fut.cancel()
            assert await asyncio.to_thread(cancelled.wait, 2.0)
            assert await bridge.call(_add, 3, 4) == 7
        finally:
            bridge.stop()

    _run(main())


def test_background_failures_go_to_on_error_and_stop_fails_pending_calls() -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        bridge = TrioThread(on_error=errors.append)
        bridge.start()
        bridge.spawn(_fail)
        pending = bridge.call(trio.sleep, 30)
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.01)
        assert [str(e) for e in errors] == ["bad peer"]
        bridge.stop()
        with pytest.raises(BridgeClosedError):
            await pending
        with pytest.raises(BridgeClosedError, match="not running"):
            bridge.call(_add, 1, 2)

    _run(main())


def test_a_thousand_bridges_leak_no_threads() -> None:
    """Start/stop churn (what 1,000 connects/disconnects do to the bridge) leaves nothing."""
    before = threading.active_count()

    async def main() -> None:
        for i in range(1000):
            bridge = TrioThread()
            bridge.start()
            assert await bridge.call(_add, i, 1) == i + 1
            bridge.stop()

    _run(main())
    assert threading.active_count() == before
