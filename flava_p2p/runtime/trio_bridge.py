"""Run trio code (py-libp2p) from the asyncio node: trio in its own thread, a small bridge.

py-libp2p is trio-only: it fails under asyncio and under anyio's asyncio backend. The node is
asyncio. So trio gets a dedicated thread with its own ``trio.run`` and one long-lived nursery;
asyncio calls in with :meth:`TrioThread.call` (scheduled with ``TrioToken.run_sync_soon``) and
the result, or the exception, comes back through ``loop.call_soon_threadsafe`` to an asyncio
future. The rules that make this safe:

* **Errors go to asyncio, never into the nursery.** Every task the bridge starts catches its own
  exceptions and hands them to the caller's future (or to ``on_error`` for background tasks),
  so one failing peer never tears down the trio loop and with it every other connection.
* **Cancellation crosses both ways.** Cancelling the asyncio future cancels the trio task's
  scope; a trio task cancelled by shutdown resolves its future with :class:`BridgeClosedError`.
* **Every call can be bounded** (``timeout``): a slow or dead peer costs a
  :class:`TimeoutError`, not a hung coroutine.
* **Shutdown is clean**: :meth:`TrioThread.stop` cancels the nursery, joins the thread and fails
  whatever was still pending; calls after that raise :class:`BridgeClosedError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from flava_p2p.errors import FlavaError

T = TypeVar("T")


class BridgeClosedError(FlavaError):
    """The trio thread is not running (never started, stopped, or crashed)."""


class TrioThread:
    """A trio event loop in a daemon thread, driven from one asyncio loop.

    ``on_error(exc)`` runs on the asyncio loop for failures of background tasks started with
    :meth:`spawn` (a call's failure goes to its own caller instead).
    """

    def __init__(
        self,
        name: str = "flava-trio",
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self._on_error = on_error
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.crash: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None, timeout: float = 10.0) -> None:
        """Start the thread and wait until its loop can take calls."""
        if self._thread is not None:
            raise BridgeClosedError("the trio thread was already started; make a new TrioThread.")
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BridgeClosedError(f"the trio thread did not start within {timeout} s.")
        if self.crash is not None:
            raise BridgeClosedError(f"the trio thread failed to start: {self.crash!r}")

    @property
    def running(self) -> bool:
        """True while calls are accepted."""
        return self._token is not None and not self._closed

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything in trio, join the thread, fail what was still pending."""
        if self._closed:
            return
        self._closed = True
        token, nursery = self._token, self._nursery
        if token is not None and nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        if self._thread is not None:
            self._thread.join(timeout)
        self._token = None
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(
                    BridgeClosedError("the trio thread stopped before the call ended.")
                )
        self._pending.clear()

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as exc:  # reported to asyncio, never re-raised here
            self.crash = exc
            self._closed = True
            self._ready.set()
            self._deliver_error(exc)

    async def _trio_main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    # ------------------------------------------------------------------ calls
    def call(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,
    ) -> asyncio.Future[T]:
        """Run ``await fn(*args)`` in trio; an asyncio future of its result (or exception).

        With ``timeout`` the trio side is cancelled after that many seconds and the future
        raises :class:`TimeoutError`. Cancelling the future cancels the trio task.
        """
        loop = self._require_loop()
        fut: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()
        self._pending.add(fut)

        def settle(ok: bool, value: Any) -> None:
            self._pending.discard(fut)
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        async def task() -> None:
            try:
                with scope:
                    if timeout is not None:
                        with trio.fail_after(timeout):
                            value = await fn(*args)
                    else:
                        value = await fn(*args)
                    self._to_asyncio(settle, True, value)
                if scope.cancelled_caught:  # the asyncio side gave up on this call
                    self._to_asyncio(settle, False, asyncio.CancelledError())
            except trio.TooSlowError:
                self._to_asyncio(
                    settle, False, TimeoutError(f"{_name(fn)} did not finish within {timeout} s")
                )
            except trio.Cancelled:
                self._to_asyncio(
                    settle, False, BridgeClosedError("the trio thread is shutting down.")
                )
                raise
            except Exception as exc:  # to the caller, not the nursery
                self._to_asyncio(settle, False, exc)

        def on_done(f: asyncio.Future[T]) -> None:
            if f.cancelled():
                self._pending.discard(f)
                self._to_trio(scope.cancel)

        fut.add_done_callback(on_done)
        self._start_in_trio(task, fut)
        return fut

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task in trio; its failure goes to ``on_error`` on asyncio."""

        async def task() -> None:
            try:
                await fn(*args)
            except trio.Cancelled:
                raise
            except Exception as exc:  # to asyncio, not the nursery
                self._deliver_error(exc)

        self._start_in_trio(task, None)

    def to_trio(self, fn: Callable[[], object]) -> bool:
        """From asyncio: run ``fn()`` soon in the trio thread (no result); False if stopped."""
        return self._to_trio(fn)

    def to_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        """From trio: run ``fn(*args)`` on the asyncio loop (dropped if the loop has closed)."""
        self._to_asyncio(fn, *args)

    # ------------------------------------------------------------------ plumbing
    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if not self.running or self._loop is None:
            raise BridgeClosedError(
                "the trio thread is not running; start() it first (or it stopped)."
            )
        return self._loop

    def _start_in_trio(
        self, task: Callable[[], Awaitable[None]], fut: asyncio.Future[Any] | None
    ) -> None:
        def start() -> None:
            if self._nursery is None:
                return
            self._nursery.start_soon(task)

        if not self._to_trio(start) and fut is not None and not fut.done():
            self._pending.discard(fut)
            fut.set_exception(BridgeClosedError("the trio thread stopped before the call started."))

    def _to_trio(self, fn: Callable[[], object]) -> bool:
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def _to_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed between the check and the call; nobody is left to tell
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _deliver_error(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._to_asyncio(self._on_error, exc)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))
