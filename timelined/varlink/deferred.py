"""Replies that another part of the program answers later, without a task or a future per call.

A handler marked with `@deferring` is a plain function that returns a `Deferred` at once (e.g. a
command queued to a batch writer) instead of a coroutine. The server then goes on to the next
call of the same read: the calls of a connection that arrived together are all queued before any
is waited for, so they can share one batch, and their replies go out together, in the order of
the calls, in one write. The server waits once per read (not once per call) for the last of
them; before it calls a handler that is not deferring (a read, a stream), it waits for the
deferred calls before it, so such a call sees their effects (read-your-writes).

The library asks two things of a Deferred: `add_done_callback(fn)` calls `fn()` once, on the
event loop, when the outcome is known (at once if it already is); the server registers one
callback per Deferred. `outcome()` then returns the reply (a Struct, or None for `{}`) or raises
the call's error, which the server sends like any handler's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["DEFERRING", "Deferred", "deferring"]

DEFERRING = "__varlink_deferring__"

F = TypeVar("F", bound=Callable[..., Any])


class Deferred(Protocol):
    """A reply that is not known yet (see the module's docstring)."""

    def add_done_callback(self, callback: Callable[[], None]) -> None: ...

    def outcome(self) -> Any: ...


def deferring(handler: F) -> F:
    """Mark `handler` as returning a `Deferred` (it must be a plain function, not async)."""
    setattr(handler, DEFERRING, True)
    return handler
