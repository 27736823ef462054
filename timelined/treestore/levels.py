"""The tree on disk: one append-only file of 32-byte hashes per level.

`level-00` holds the leaf hashes, `level-NN` the hashes of the perfect subtrees of 2^NN leaves,
left to right. Appending a leaf costs amortized two hashes; any perfect subtree's hash is one
pread, so a proof is O(log n) reads (`timelined.transparency.merkle`).

New hashes wait in memory (bounded: `flush` runs past FLUSH_BYTES) and are written without fsync:
the tree is derived from the log, so a crash may lose or tear its tail and `open` cuts every
level back to what the level below supports and recomputes what is missing; `LogTree` then
extends it from the log.
"""

from __future__ import annotations

import os
from hashlib import sha256
from pathlib import Path

from timelined.transparency.merkle import HASH_SIZE, NODE_PREFIX, node_hash

FLUSH_BYTES = 256 * 1024
MAX_LEVELS = 64


class LevelFiles:
    """A `NodeSource` on disk; not thread-safe (the daemon uses it on its event loop)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: list[int] = []
        self._flushed: list[int] = []  # hashes on disk, per level
        self._counts: list[int] = []  # hashes on disk or pending, per level
        self._pending: list[bytearray] = []  # hashes not yet written, per level
        self._pending_bytes = 0
        self._last: list[bytes] = []  # each level's last hash, the left half of the next pair

    @classmethod
    def open(cls, directory: Path) -> LevelFiles:
        directory.mkdir(
            parents=True, exist_ok=True
        )  # the daemon's umask: 0700, or 0750 for a group
        files = cls(directory)
        level = 0
        while level == 0 or (directory / f"level-{level:02d}").exists():
            files._open_level(level)
            level += 1
        files._repair()
        return files

    def _open_level(self, level: int) -> None:
        path = self.directory / f"level-{level:02d}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._fds.append(fd)
        self._flushed.append(os.fstat(fd).st_size // HASH_SIZE)
        self._counts.append(self._flushed[-1])
        self._pending.append(bytearray())
        self._last.append(b"")

    def _repair(self) -> None:
        """Cut torn entries, then make each level hold exactly half the one below."""
        for level in range(len(self._fds)):
            count = self._flushed[level]
            if level:
                count = min(count, self._flushed[level - 1] // 2)
            self._cut(level, count)
        level = 1
        while level < len(self._fds) or self._flushed[level - 1] >= 2:
            if level == len(self._fds):
                self._open_level(level)
            below = level - 1
            for index in range(self._flushed[level], self._flushed[below] // 2):
                pair = self.node(below, 2 * index), self.node(below, 2 * index + 1)
                self._write(level, node_hash(*pair))
            self.flush()
            level += 1
        for level in range(len(self._fds)):
            if self._flushed[level]:
                self._last[level] = self.node(level, self._flushed[level] - 1)

    def _cut(self, level: int, count: int) -> None:
        os.ftruncate(self._fds[level], count * HASH_SIZE)
        self._flushed[level] = self._counts[level] = count

    @property
    def size(self) -> int:
        return self._counts[0]

    def node(self, level: int, index: int) -> bytes:
        flushed = self._flushed[level]
        if index < flushed:
            data = os.pread(self._fds[level], HASH_SIZE, index * HASH_SIZE)
            if len(data) != HASH_SIZE:
                raise OSError(f"tree level {level} is shorter than {flushed} hashes")
            return data
        start = (index - flushed) * HASH_SIZE
        data = bytes(self._pending[level][start : start + HASH_SIZE])
        if len(data) != HASH_SIZE:
            raise IndexError(f"no node {index} at level {level}")
        return data

    def _write(self, level: int, digest: bytes) -> None:
        if level == len(self._fds):
            self._open_level(level)
        self._pending[level] += digest
        self._pending_bytes += HASH_SIZE
        self._last[level] = digest
        self._counts[level] += 1

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash and every perfect subtree it completes (the hot path: each
        committed event; written out flat rather than through `_write`)."""
        counts, last, pending = self._counts, self._last, self._pending
        level, digest = 0, leaf
        while True:
            if level == len(counts):
                if level >= MAX_LEVELS:
                    raise OverflowError("the tree cannot grow past 2**64 leaves")
                self._open_level(level)
            left = last[level]
            pending[level] += digest
            last[level] = digest
            counts[level] += 1
            if counts[level] & 1:
                break
            digest = sha256(NODE_PREFIX + left + digest).digest()  # merkle.node_hash, inlined
            level += 1
        self._pending_bytes += HASH_SIZE * (level + 1)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def extend(self, leaves: list[bytes]) -> None:
        """Add many leaf hashes: each level's new hashes in one pass, then the level above
        from their pairs (the same hashes as `append` for each, with a Python step per pair
        rather than per leaf and level)."""
        counts, last, pending = self._counts, self._last, self._pending
        level, new, added = 0, leaves, 0
        while new:
            if level == len(counts):
                if level >= MAX_LEVELS:
                    raise OverflowError("the tree cannot grow past 2**64 leaves")
                self._open_level(level)
            # A level with an odd count holds a left half waiting for its right: new[0].
            first = 1 if counts[level] & 1 else 0
            up = [sha256(NODE_PREFIX + last[level] + new[0]).digest()] if first else []
            up += [
                sha256(NODE_PREFIX + new[i - 1] + new[i]).digest()  # merkle.node_hash, inlined
                for i in range(first + 1, len(new), 2)
            ]
            pending[level] += b"".join(new)
            last[level] = new[-1]
            counts[level] += len(new)
            added += len(new)
            new = up
            level += 1
        self._pending_bytes += HASH_SIZE * added
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write every waiting hash (no fsync: see the module's docstring)."""
        for level, pending in enumerate(self._pending):
            if pending:
                with memoryview(pending) as whole:
                    view = whole
                    while view:
                        view = view[os.write(self._fds[level], view) :]
                    view.release()
                self._flushed[level] += len(pending) // HASH_SIZE
                pending.clear()
        self._pending_bytes = 0

    def truncate(self, size: int) -> None:
        """Keep the first `size` leaves (the log holds fewer, or other, lines)."""
        self.flush()
        for level in range(len(self._fds)):
            self._cut(level, min(self._flushed[level], size >> level))
            count = self._flushed[level]
            self._last[level] = self.node(level, count - 1) if count else b""

    def close(self) -> None:
        self.flush()
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class LevelReader:
    """The level files read-only, as another process or thread sees them while the daemon
    appends (the verifier's `NodeSource`). Sequential reads go through one bounded buffer per
    level (READ_BYTES), so a full check reads each file once in large chunks."""

    READ_BYTES = 64 * 1024

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: list[int] = []
        level = 0
        while (path := directory / f"level-{level:02d}").exists():
            self._fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            level += 1
        self._buffers: list[tuple[int, bytes]] = [(0, b"")] * len(self._fds)

    def size(self) -> int:
        """The leaves whose every node is on disk: the daemon writes level 0 first, so a level
        above may lag; n leaves need n >> level hashes at each level."""
        counts = [os.fstat(fd).st_size // HASH_SIZE for fd in self._fds]
        if not counts:
            return 0
        size = counts[0]
        for level in range(1, len(counts)):
            size = min(size, (counts[level] << level) | ((1 << level) - 1))
        return size if size >> len(counts) == 0 else min(size, (1 << len(counts)) - 1)

    def node(self, level: int, index: int) -> bytes:
        if level >= len(self._fds):
            return b""  # no such level on disk: differs from any hash
        start, data = self._buffers[level]
        offset = index * HASH_SIZE - start
        if not 0 <= offset <= len(data) - HASH_SIZE:
            start = index * HASH_SIZE
            data = os.pread(self._fds[level], self.READ_BYTES, start)
            self._buffers[level] = (start, data)
            offset = 0
        return data[offset : offset + HASH_SIZE]

    def nodes(self, level: int, index: int, count: int) -> bytes:
        """`count` hashes of `level` from `index` on, concatenated: shorter where the file
        ends (and empty for a level not on disk)."""
        if level >= len(self._fds):
            return b""
        want = count * HASH_SIZE
        parts: list[bytes] = []
        pos = index * HASH_SIZE
        while want:
            data = os.pread(self._fds[level], want, pos)
            if not data:
                break
            parts.append(data)
            pos += len(data)
            want -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
