"""The tree's full check in bulk: stored hashes compared with the log's, a chunk of leaves at a
time.

`check_against_log` (logtree.py) recomputes the tree one leaf at a time: a Python loop with two
stored-node reads and a stack per leaf, over the log read a second time. Here the leaves come in
batches (the chain walk's good lines, `auditlog.scan.walk_chain(on_lines=...)`), are hashed by a
comprehension, and each chunk of CHUNK_LEAVES leaves is compared level by level with the stored
files in one read and one comparison per level: CHUNK_LEAVES is a power of two and chunks start
at its multiples, so every node of the chunk's levels up to CHUNK_LEVEL lies within it. The
chunks' roots go through the same stack as the leaves in `check_against_log`, for the levels
above. Every stored node of the first `size` leaves is compared, as there.

Only whether the tree matches is decided here. On any difference, the first node that differs in
the order the tree was built (what the report names) is found by `check_against_log` itself,
reading the log again: a mismatch is rare, and the answer is then exactly the one-leaf-at-a-time
check's. Memory: one chunk of hashes, one hash per level above it.
"""

from __future__ import annotations

from hashlib import sha256

from timelined.auditlog.source import LogSource
from timelined.transparency.merkle import LEAF_PREFIX, NODE_PREFIX
from timelined.treestore.levels import LevelReader
from timelined.treestore.logtree import TreeMismatch, check_against_log

CHUNK_LEVEL = 12
CHUNK_LEAVES = 1 << CHUNK_LEVEL


class LeafCheck:
    """Compares the stored tree with the first `limit` leaves fed (log lines in seq order)."""

    def __init__(self, reader: LevelReader, limit: int, chunk_level: int | None = None) -> None:
        self.chunk_level = CHUNK_LEVEL if chunk_level is None else chunk_level  # tests: small
        self.chunk_leaves = 1 << self.chunk_level
        self.reader = reader
        self.limit = limit
        self.fed = 0  # lines taken (at most `limit`)
        self.checked = 0  # leaves compared, with the nodes they complete
        self.differs = False
        self._leaves: list[bytes] = []  # hashed, not yet compared (less than a chunk)
        self._roots: list[bytes] = []  # the chunks' perfect subtrees above CHUNK_LEVEL

    def feed(self, lines: list[bytes]) -> None:
        """Take the next log lines (without their newlines); those past `limit` are ignored."""
        room = self.limit - self.fed
        if room <= 0 or self.differs:
            return
        if len(lines) > room:
            lines = lines[:room]
        self._leaves += [sha256(LEAF_PREFIX + line).digest() for line in lines]
        self.fed += len(lines)
        size = self.chunk_leaves
        while len(self._leaves) >= size and not self.differs:
            chunk = self._leaves[:size]
            del self._leaves[:size]
            self._compare(chunk)

    def _compare(self, leaves: list[bytes]) -> None:
        """Compare a chunk starting at leaf `checked` (a multiple of the chunk's size) and every
        node it completes."""
        level, index, hashes = 0, self.checked, leaves
        while True:
            if self.reader.nodes(level, index, len(hashes)) != b"".join(hashes):
                self.differs = True
                return
            if len(hashes) < 2:
                break
            end = len(hashes) & ~1  # an odd last hash completes no node of the next level
            pairs = zip(hashes[0:end:2], hashes[1:end:2], strict=True)
            hashes = [sha256(NODE_PREFIX + a + b).digest() for a, b in pairs]
            level += 1
            index >>= 1
        self.checked += len(leaves)
        if len(leaves) < self.chunk_leaves:
            return  # the last, short chunk: it completes no node above its own levels
        stack = self._roots
        stack.append(hashes[0])
        chunks = self.checked >> self.chunk_level
        above = 0
        while (chunks >> above) & 1 == 0:
            right = stack.pop()
            digest = sha256(NODE_PREFIX + stack.pop() + right).digest()
            above += 1
            node = (chunks >> above) - 1
            if self.reader.nodes(self.chunk_level + above, node, 1) != digest:
                self.differs = True
                return
            stack.append(digest)

    def finish(self, size: int, source: LogSource) -> TreeMismatch | None:
        """The first `size` leaves' verdict (`size` at most the lines fed): None when every
        stored node matches, else the first that differs (from `check_against_log`)."""
        if not self.differs and self._leaves:
            self._compare(self._leaves)
            self._leaves = []
        if not self.differs and self.checked == size:
            return None
        # A difference (or fewer lines than `size`): name it exactly as the leaf-by-leaf check.
        return check_against_log(self.reader, size, source)
