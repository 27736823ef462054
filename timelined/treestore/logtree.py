"""The Merkle tree of the log: leaf i is line seq = i + 1 (its bytes without the newline).

Kept beside the writer, not in it: `on_commit` is an `Engine.subscribe` callback (on the event
loop, after each committed batch) given each record's line exactly as the writer wrote it; the
lines wait, bounded, and every read of the tree (`files`, a root, a proof, a flush) first hashes
them in, many leaves at once (`LevelFiles.extend`): one append costs a list append where it cost
a leaf's and its nodes' Python steps. `open` trusts the files on disk
no further than the log: it cuts them to the log's head, checks the last leaf against the log's
line (a log rewritten behind the daemon's back makes the whole tree be recomputed from it) and
extends them from the log to its head. The verifier's full check is `check_against_log`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from timelined.auditlog.source import LogSource
from timelined.events import Record
from timelined.transparency import merkle
from timelined.treestore.levels import LevelFiles

log = logging.getLogger(__name__)
# Written in the tree's directory when the verifier finds it differs from the log: the next
# open recomputes it whole (a rebuild from the log is always valid: the tree is derived).
REBUILD_MARK = "rebuild"
# How many committed lines (and bytes of them) wait for the next read of the tree before they
# are hashed in anyway: a bound on the memory they hold, not a delay (reads catch up first).
WAIT_LEAVES = 256
WAIT_BYTES = 256 * 1024


class LogTree:
    """The tree the daemon serves. A commit's lines wait (bounded: WAIT_LEAVES, WAIT_BYTES)
    and are hashed in when something reads the tree (a root, a proof, a flush) or the bound is
    reached: the commit subscriber then costs an append to a list, and the hashing runs over
    many leaves at once. `size` counts the waiting leaves (they are the tree's, in seq order)."""

    def __init__(self, files: LevelFiles) -> None:
        self._files = files
        self.broken: str | None = None
        self._waiting: list[bytes] = []  # committed lines (newline included), not hashed yet
        self._waiting_bytes = 0

    @classmethod
    def open(cls, tree_dir: Path, source: LogSource, head_seq: int) -> LogTree:
        files = LevelFiles.open(tree_dir)
        marked = (tree_dir / REBUILD_MARK).exists()
        if marked:
            log.warning("the verifier found the Merkle tree differs from the log: recomputed")
            files.truncate(0)
        if files.size > head_seq:
            log.warning(
                "the Merkle tree holds %d leaves, the log %d: cut back", files.size, head_seq
            )
            files.truncate(head_seq)
        if files.size and files.node(0, files.size - 1) != _leaf_from_log(source, files.size):
            log.warning("the Merkle tree does not match the log at seq %d: recomputed", files.size)
            files.truncate(0)
        if files.size < head_seq:
            log.info("extending the Merkle tree from seq %d to %d", files.size + 1, head_seq)
            build_from_log(files, source, head_seq)
        files.flush()
        if marked:
            (tree_dir / REBUILD_MARK).unlink(missing_ok=True)
        return cls(files)

    @property
    def size(self) -> int:
        return self._files.size + len(self._waiting)

    @property
    def files(self) -> LevelFiles:
        """The level files with every committed leaf in them."""
        self._catch_up()
        return self._files

    def on_commit(self, records: list[Record], lines: list[bytes]) -> None:
        """The engine's commit subscriber: one leaf per record, in seq order, hashed (later)
        from the line the writer wrote (newline included)."""
        if self.broken is not None:
            return
        waiting = self._waiting
        expected = self._files.size + len(waiting) + 1
        for i, r in enumerate(records):
            if r.seq != expected + i:
                self.broken = f"expected seq {expected + i}, got {r.seq}"
                lines = lines[:i]  # the leaves before the gap are the tree's
                break
        else:
            if len(lines) != len(records):
                raise ValueError(f"{len(records)} records, {len(lines)} lines")
        waiting += lines
        self._waiting_bytes += sum(map(len, lines))
        if len(waiting) >= WAIT_LEAVES or self._waiting_bytes >= WAIT_BYTES:
            self._catch_up()
        if self.broken is not None:
            log.error("the Merkle tree stops at %d: %s", self.size, self.broken)

    def _catch_up(self) -> None:
        """Hash the waiting lines into the files (every read of the tree comes here first)."""
        waiting = self._waiting
        if waiting:
            self._waiting, self._waiting_bytes = [], 0
            prefix = merkle.LEAF_PREFIX  # merkle.leaf_hash, inlined: one Python step per leaf
            self._files.extend([sha256(prefix + line[:-1]).digest() for line in waiting])

    def flush(self) -> None:
        """Every committed leaf into the files, and the files' waiting hashes to disk."""
        self.files.flush()

    def root(self, size: int) -> bytes:
        self._check_size(size)
        return merkle.root(self.files, size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        return merkle.inclusion_proof(self.files, index, size)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        self._check_size(new_size)
        return merkle.consistency_proof(self.files, old_size, new_size)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise merkle.ProofError(f"tree size {size} is beyond the tree's {self.size}")

    def replace_files(self, files: LevelFiles) -> None:
        """Serve from `files` (a tree rebuilt from the log up to `size`, the waiting leaves
        included: they are in the log) from now on."""
        old, self._files = self._files, files
        self._waiting, self._waiting_bytes = [], 0
        old.close()

    def close(self) -> None:
        self.files.close()


def build_from_log(files: LevelFiles, source: LogSource, upto: int) -> None:
    """Extend `files` with the log's lines up to seq `upto` (blocking; bounded memory: the
    leaves go in by WAIT_LEAVES)."""
    leaves: list[bytes] = []
    for _, line in source.lines(files.size, upto):
        leaves.append(merkle.leaf_hash(line[:-1]))
        if len(leaves) == WAIT_LEAVES:
            files.extend(leaves)
            leaves = []
    files.extend(leaves)
    files.flush()


def _leaf_from_log(source: LogSource, seq: int) -> bytes:
    line = source.line(seq)  # at every boot, at or near the log's head: read from the end
    return b"" if line is None else merkle.leaf_hash(line[:-1])


@dataclass(frozen=True, slots=True)
class TreeMismatch:
    """The first stored node that differs from the log: `level` 0 is a leaf hash; the node
    covers the leaves from `first_leaf` (leaf i is seq i + 1)."""

    level: int
    index: int
    first_leaf: int
    detail: str


def check_against_log(src: merkle.NodeSource, size: int, source: LogSource) -> TreeMismatch | None:
    """Recompute the first `size` leaves from the log and compare every stored node (the
    verifier's check; memory: one hash per level). None when all match, else the first node
    (in the order the tree was built) that differs. A damaged log raises LogDamaged."""
    stack: list[bytes] = []  # the perfect subtrees of the leaves so far, largest first
    count = 0
    for seq, line in source.lines(0, size):
        digest = merkle.leaf_hash(line[:-1])
        if src.node(0, seq - 1) != digest:
            return TreeMismatch(
                0, seq - 1, seq - 1, f"leaf {seq - 1} (seq {seq}) differs from the log"
            )
        stack.append(digest)
        count += 1
        level = 0
        while (count >> level) & 1 == 0:
            right = stack.pop()
            digest = merkle.node_hash(stack.pop(), right)
            level += 1
            index = (count >> level) - 1
            if src.node(level, index) != digest:
                first = index << level
                return TreeMismatch(
                    level,
                    index,
                    first,
                    f"node {index} of level {level} (leaves {first}..{first + (1 << level) - 1})"
                    " differs from the log",
                )
            stack.append(digest)
    if count != size:
        return TreeMismatch(0, count, count, f"the tree has {size} leaves, the log {count} lines")
    return None
