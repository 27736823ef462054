"""The Merkle tree of the log: leaf i is line seq = i + 1 (its bytes without the newline).

Kept beside the writer, not in it: `on_commit` is an `Engine.subscribe` callback (on the event
loop, after each committed batch) that re-encodes each record's line, exactly as the writer made
it (the record's own hash proves it), and appends its leaf hash. `open` trusts the files on disk
no further than the log: it cuts them to the log's head, checks the last leaf against the log's
line (a log rewritten behind the daemon's back makes the whole tree be recomputed from it) and
extends them from the log to its head. The verifier's full check is `check_against_log`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from timelined.auditlog.source import LogSource
from timelined.events import Record
from timelined.transparency import merkle
from timelined.treestore.levels import LevelFiles

log = logging.getLogger(__name__)
# Written in the tree's directory when the verifier finds it differs from the log: the next
# open recomputes it whole (a rebuild from the log is always valid: the tree is derived).
REBUILD_MARK = "rebuild"


class LogTree:
    def __init__(self, files: LevelFiles) -> None:
        self.files = files
        self.broken: str | None = None

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
        tree = cls(files)
        if files.size < head_seq:
            log.info("extending the Merkle tree from seq %d to %d", files.size + 1, head_seq)
            tree.extend(line[:-1] for _, line in source.lines(files.size, head_seq))
        files.flush()
        if marked:
            (tree_dir / REBUILD_MARK).unlink(missing_ok=True)
        return tree

    @property
    def size(self) -> int:
        return self.files.size

    def extend(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.files.append(merkle.leaf_hash(line))

    def on_commit(self, records: list[Record], lines: list[bytes]) -> None:
        """The engine's commit subscriber: one leaf per record, in seq order, hashed from the
        line the writer wrote (newline included)."""
        if self.broken is not None:
            return
        files = self.files
        append, leaf_hash = files.append, merkle.leaf_hash  # once per batch, not per record
        expected = files.size + 1
        for r, line in zip(records, lines, strict=True):
            if r.seq != expected:
                self.broken = f"expected seq {expected}, got {r.seq}"
                log.error("the Merkle tree stops at %d: %s", files.size, self.broken)
                return
            append(leaf_hash(line[:-1]))
            expected += 1

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
        if not 0 <= size <= self.files.size:
            raise merkle.ProofError(f"tree size {size} is beyond the tree's {self.files.size}")

    def replace_files(self, files: LevelFiles) -> None:
        """Serve from `files` (a tree rebuilt from the log, as long as this one) from now on."""
        old, self.files = self.files, files
        old.close()

    def close(self) -> None:
        self.files.close()


def build_from_log(files: LevelFiles, source: LogSource, upto: int) -> None:
    """Extend `files` with the log's lines up to seq `upto` (blocking; bounded memory)."""
    for _, line in source.lines(files.size, upto):
        files.append(merkle.leaf_hash(line[:-1]))
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
