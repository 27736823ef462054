"""One OS thread that runs calls in the order they are submitted (the writer's thread).

Why not `anyio.to_thread.run_sync` with a limiter of one: each of its calls goes through the
worker pool's queue, a capacity-limiter acquire and release and an extra event-loop wake-up; on
the write path that hop cost about 150 µs per batch, as much as a fast fsync (see
docs/performance.md, pass 3). A dedicated thread costs one queue put and one
`call_soon_threadsafe`.

Contract:

- `run(fn, *args)` runs `fn(*args)` on the thread and returns its result or raises what it
  raised (any `BaseException`, `SystemExit` included: the thread survives it).
- Calls run one at a time, in submission order.
- Cancelling the caller does not cancel the call: the caller waits (shielded) for it to end, so
  a call never outlives the task that made it and nothing runs behind a caller's back.
- `submit(fn, *args)` is `run` without the shield, for a caller that cannot be cancelled while
  it waits (one inside a shielded scope for its whole life, as the engine's writer loop): it
  returns the call's future to await. Entering a cancel scope per call was most of the hop's
  cost on the event loop at one connection (docs/performance.md).
- `close()` runs after every call already submitted, joins the thread, and is idempotent;
  `run` after `close` raises `RuntimeError`.

asyncio only (the daemon's backend); the loop is the one running when `run` is called.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

log = logging.getLogger("timelined.writer.serial_thread")

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"] | None


class SerialThread:
    """A named daemon thread that runs submitted calls one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the thread; see the module's contract."""
        future = self.submit(fn, *args)
        with anyio.CancelScope(shield=True):
            result = await future
        return result

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(*args)` for the thread; its future (see the module's contract)."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((lambda: fn(*args), loop, future))
        return future

    def close(self) -> None:
        """Finish what was submitted, then stop and join the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, loop, future = job
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, who decides what is fatal
                settle: Callable[..., None] = _settle_error
                outcome: Any = exc
            else:
                settle, outcome = _settle, result
            try:
                loop.call_soon_threadsafe(settle, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits; the thread stays usable
                if settle is _settle_error:
                    log.error(
                        "%s: a call failed after its loop closed", self.name, exc_info=outcome
                    )


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
    else:  # the caller was cancelled natively (not through anyio's shield) and left
        log.error("a call failed after its caller left", exc_info=exc)
