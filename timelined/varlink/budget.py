"""One daemon-wide budget of bytes held in buffers: reply frames on their way out, large
incoming frames, watchers' queues.

Each connection is bounded on its own (a frame is at most `max_message_bytes`, a stream holds
one encoded reply at a time); this bounds their sum. A streaming reply that does not fit waits
for room (back-pressure: its stream pulls nothing more meanwhile); a buffer that may not wait (a
frame arriving, a watcher's queue) is refused instead (`try_take`), and the caller names the
limit in its error (`refusal`).

A buffer counted for a peer (its uid) also counts in that uid's share (`share`, 0: none): one
uid's connections together may hold no more than it, so a single peer cannot fill the whole
budget and stall everyone else's streams and large calls (40 connections of one read-only uid
each holding ~1 MiB of an unfinished frame filled a 32 MiB budget).
"""

from __future__ import annotations

import anyio

__all__ = ["ByteBudget"]


class ByteBudget:
    """`limit` bytes shared by every connection, at most `share` of them by one uid; 0 means
    unbounded (only counted)."""

    __slots__ = ("_by_uid", "_room", "limit", "share", "used")

    def __init__(self, limit: int = 0, share: int = 0) -> None:
        self.limit = limit
        self.share = share
        self.used = 0
        self._by_uid: dict[int, int] = {}  # what each uid holds; a uid holding nothing is absent
        self._room: anyio.Event | None = None  # made inside the event loop, on first wait

    def held_by(self, uid: int) -> int:
        return self._by_uid.get(uid, 0)

    def fits(self, size: int, uid: int | None = None) -> bool:
        # An empty budget takes anything: a single buffer larger than the whole budget (a
        # frame, bounded on its own by max_message_bytes) must not wait forever. The same for
        # a uid's share.
        if not (self.limit <= 0 or self.used == 0 or self.used + size <= self.limit):
            return False
        if uid is None or self.share <= 0:
            return True
        held = self._by_uid.get(uid, 0)
        return held == 0 or held + size <= self.share

    def refusal(self, size: int, uid: int | None = None) -> tuple[str, int, int]:
        """Why `size` does not fit: (the limit's name, the bytes it would hold, its maximum);
        the bytes are what is in use plus this request, so the error is true on its face."""
        if uid is not None and self.share > 0:
            held = self._by_uid.get(uid, 0)
            if held and held + size > self.share:
                return (
                    f"max_buffered_bytes_per_uid (uid {uid}: in use + this buffer)",
                    held + size,
                    self.share,
                )
        return "max_buffered_bytes (in use + this buffer)", self.used + size, self.limit

    def try_take(self, size: int, uid: int | None = None) -> bool:
        """Count `size` now if it fits; False (nothing counted) if it does not."""
        if not self.fits(size, uid):
            return False
        self.count(size, uid)
        return True

    def count(self, size: int, uid: int | None = None) -> None:
        """Count `size` even past the limit: a buffer that must be taken (bounded elsewhere)."""
        self.used += size
        if uid is not None:
            self._by_uid[uid] = self._by_uid.get(uid, 0) + size

    async def take(self, size: int, uid: int | None = None) -> None:
        """Count `size`, first waiting until it fits."""
        while not self.fits(size, uid):
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        self.count(size, uid)

    def give(self, size: int, uid: int | None = None) -> None:
        """Return `size` bytes taken before (for the same uid); wakes every waiter to try
        again."""
        self.used = max(0, self.used - size)
        if uid is not None:
            left = self._by_uid.get(uid, 0) - size
            if left > 0:
                self._by_uid[uid] = left
            else:
                self._by_uid.pop(uid, None)
        if self._room is not None:
            self._room.set()
            self._room = None
