"""The daemon's stop and reload signals while it serves: blocked, and taken by one thread.

Why not the event loop's signal handlers: removing them (when the receiver closes at the end of a
stop, or when the loop closes) sets SIGTERM and SIGHUP back to their default action, termination,
before anything can set them to be ignored; a signal in that gap killed a daemon that had
finished its stop (marker written) but not yet exited. Here the signals are blocked in every
thread (`block` runs before the serving phase starts any thread; threads inherit the mask) and a
thread of our own takes them with `sigwait`: a signal never meets a default action. Once the
receiver is closed, a signal is taken and dropped; they stay blocked until the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager

import anyio

log = logging.getLogger(__name__)


def block(signums: Iterable[int]) -> None:
    """Block `signums` in the calling (main) thread and every thread it starts from now on."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))


@contextmanager
def receive_signals(signums: Iterable[int]) -> Iterator[AsyncIterator[int]]:
    """The blocked `signums` as they arrive, on the running event loop (call `block` first).

    The iterator ends when the context exits; signals arriving later are dropped (logged at
    debug level), never acted on by a default action.
    """
    wanted = set(signums)
    loop = asyncio.get_running_loop()
    send, receive = anyio.create_memory_object_stream[int](math.inf)  # signals are few
    open_ = True

    def deliver(signum: int) -> None:
        if open_:
            send.send_nowait(signum)
        else:
            log.debug("signal %s after the stop: ignored", signal.Signals(signum).name)

    def take() -> None:
        while True:
            signum = signal.sigwait(wanted)
            try:
                loop.call_soon_threadsafe(deliver, signum)
            except RuntimeError:  # the loop is closed: the daemon is on its way out
                log.debug("signal %s after the loop closed: ignored", signal.Signals(signum).name)

    threading.Thread(target=take, name="timelined-signals", daemon=True).start()
    try:
        yield receive
    finally:
        open_ = False
        send.close()
