"""Replies that another part of the program answers later, without a task or a future per call.

A handler marked with `@deferring` is a plain function that returns a `Deferred` at once (e.g. a
command queued to a batch writer) instead of a coroutine. The server then goes on to the next
call of the same read: the calls of a connection that arrived together are all queued before any
is waited for, so they can share one batch, and their replies go out together, in the order of
the calls, in one write. The server waits once per read (not once per call) for the last of
them; before it calls a handler that is not deferring (a read, a stream), it waits for the
deferred calls before it, so such a call sees their effects (read-your-writes).

A deferred call's reply is only known once its batch is answered, and then the replies of every
call of the batch exist at once: so the server starts a connection's deferred calls only while
the replies they may produce fit its window (server.py). It cannot know a reply's size before
the outcome, so it reserves a whole frame (`max_message_bytes`) for each: such calls of one
connection run one at a time. A handler whose reply is bounded by its call (an append answers
with the block it was sent) is also marked `@reply_like_call`: the server reserves the call's
own size (plus a little) instead, and up to 32 such calls of a connection share a batch.

The library asks two things of a Deferred: `add_done_callback(fn)` calls `fn()` once, on the
event loop, when the outcome is known (at once if it already is); the server registers one
callback per Deferred. `outcome()` then returns the reply (a Struct, or None for `{}`) or raises
the call's error, which the server sends like any handler's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["DEFERRING", "REPLY_LIKE_CALL", "Deferred", "deferring", "reply_like_call"]

DEFERRING = "__varlink_deferring__"
REPLY_LIKE_CALL = "__varlink_reply_like_call__"

F = TypeVar("F", bound=Callable[..., Any])


class Deferred(Protocol):
    """A reply that is not known yet (see the module's docstring)."""

    def add_done_callback(self, callback: Callable[[], None]) -> None: ...

    def outcome(self) -> Any: ...


def deferring(handler: F) -> F:
    """Mark `handler` as returning a `Deferred` (it must be a plain function, not async)."""
    setattr(handler, DEFERRING, True)
    return handler


def reply_like_call(handler: F) -> F:
    """Mark a `@deferring` handler whose reply is at most a small multiple of its call's
    parameters plus about a kilobyte (the server's window counts on it; see above)."""
    setattr(handler, REPLY_LIKE_CALL, True)
    return handler
