"""How much a reply may hold: the one budget every list, page and stream of the daemon fills.

A reply is one Varlink frame and no frame may pass `limits.max_message_bytes` (a client with the
same limit could not read it). Each method that answers with many items (ListBlocks, GetHistory,
ReadLog, SearchBlocks, Watch, ExportConversation's parts) counts each item's encoded size into a
`ReplyBudget` as it reads the item, so it stops before the reply outgrows the frame and never
reads what it will not send. A page or a stream stops early (ListBlocks, ReadLog, SearchBlocks,
a Watch batch: fewer items, and a cursor or flag); a whole-or-nothing answer (GetHistory) is
refused with LimitExceeded. One item too big for a frame of its own is refused by name too:
never a frame over the limit.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from timelined.errors import LimitExceeded

__all__ = [
    "REPLY_ENVELOPE",
    "REPLY_LIMIT",
    "ReplyBudget",
    "handed",
    "item_size",
    "json_size",
    "text_size",
]

# The name LimitExceeded gives when a reply would pass the frame limit.
REPLY_LIMIT = "limits.max_message_bytes (reply)"
# The reply's own bytes besides its items: {"parameters":{"events":[…],"live":false},…}\0
REPLY_ENVELOPE = 256

_encode = msgspec.json.Encoder().encode


def json_size(text: str) -> int:
    """The exact bytes of `text` as a JSON string (quotes and escapes included)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2  # the common case, without a copy (isascii is O(1))
    return len(_encode(text))


def item_size(item: object) -> int:
    """The exact bytes of `item` in a reply's list: its JSON and a separating comma. (An
    encoding more: for items read rarely and of no known shape, as a tree's contexts.)"""
    return len(_encode(item)) + 1


def text_size(text: str) -> int:
    """The bytes of `text` in UTF-8: what JSON text stored as a string takes on the wire."""
    return len(text) if text.isascii() else len(text.encode())


class ReplyBudget:
    """The bytes a reply may still take. `add` for a page (stop before it overflows), `take`
    for a whole-or-refused answer."""

    __slots__ = ("count", "full", "maximum", "used")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.used = REPLY_ENVELOPE
        self.count = 0
        self.full = False  # an item was left out for want of room

    def fits(self, size: int) -> bool:
        return self.used + size <= self.maximum

    def add(self, size: int) -> bool:
        """Count an item of `size` if the reply still holds it; False (nothing counted) when it
        does not: the page ends before it. LimitExceeded when it would not fit even alone."""
        if not self.fits(size):
            if self.count == 0:
                raise LimitExceeded(REPLY_LIMIT, self.used + size, self.maximum)
            self.full = True
            return False
        self.used += size
        self.count += 1
        return True

    def take(self, size: int) -> None:
        """Count `size`; LimitExceeded (naming the config key) when the reply would not fit."""
        self.used += size
        self.count += 1
        if self.used > self.maximum:
            raise LimitExceeded(REPLY_LIMIT, self.used, self.maximum)


T = TypeVar("T")


def handed(items: list[T]) -> list[T]:
    """A new list of `items`' contents, `items` emptied: a stream generator yields it and keeps
    nothing of it, so a reply waiting in the socket of a client that does not read is held
    once (its frame), not again by the generator suspended at its `yield`."""
    out = items[:]
    items.clear()
    return out
