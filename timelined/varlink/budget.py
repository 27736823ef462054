"""One daemon-wide budget of bytes held in buffers: reply frames on their way out, large
incoming frames, watchers' queues.

Each connection is bounded on its own (a frame is at most `max_message_bytes`, a stream holds
one encoded reply at a time); this bounds their sum. A streaming reply that does not fit waits
for room (back-pressure: its stream pulls nothing more meanwhile); a buffer that may not wait (a
frame arriving, a watcher's queue) is refused instead (`try_take`), and the caller names the
limit in its error.
"""

from __future__ import annotations

import anyio

__all__ = ["ByteBudget"]


class ByteBudget:
    """`limit` bytes shared by every connection; 0 means unbounded (only counted)."""

    __slots__ = ("_room", "limit", "used")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.used = 0
        self._room: anyio.Event | None = None  # made inside the event loop, on first wait

    def fits(self, size: int) -> bool:
        # An empty budget takes anything: a single buffer larger than the whole budget (a
        # frame, bounded on its own by max_message_bytes) must not wait forever.
        return self.limit <= 0 or self.used == 0 or self.used + size <= self.limit

    def try_take(self, size: int) -> bool:
        """Count `size` now if it fits; False (nothing counted) if it does not."""
        if not self.fits(size):
            return False
        self.used += size
        return True

    def count(self, size: int) -> None:
        """Count `size` even past the limit: a buffer that must be taken (bounded elsewhere)."""
        self.used += size

    async def take(self, size: int) -> None:
        """Count `size`, first waiting until it fits."""
        while not self.fits(size):
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        self.used += size

    def give(self, size: int) -> None:
        """Return `size` bytes taken before; wakes every waiter to try again."""
        self.used = max(0, self.used - size)
        if self._room is not None:
            self._room.set()
            self._room = None
