"""The Merkle tree's check: its stored hashes recomputed from the log (docs/transparency.md).

The tree is read through its own read-only descriptors while the daemon appends; the leaves are
the log's lines. On the segment files the chain walk hands its good lines to the check as it
goes (`TreeCheck.on_lines`, `check_chain(on_lines=...)`), so the log is read and its chain
checked once; elsewhere (`check_tree`: PostgreSQL's log table, on the run's own connection) the
check reads the lines from a `LogSource` after the walk. Either way the comparison is
treestore.leafcheck's, in chunks. Memory: a chunk of hashes and one hash per level above it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from timelined.api.verify import ChainResult, TreeResult
from timelined.auditlog.source import FileLogSource, LogSource
from timelined.errors import LogDamaged
from timelined.treestore.leafcheck import CHUNK_LEAVES, LeafCheck
from timelined.treestore.levels import LevelReader
from timelined.verifier.chain import check_chain


class TreeCheck:
    """One check of the tree's first leaves: as many as `upto` (the tree's size at the run's
    start, in the daemon; None offline), the files hold when it starts and the intact chain
    reaches. Feed it the log's lines from seq 1 on (`on_lines`), then `finish`."""

    def __init__(self, tree_dir: Path, upto: int | None) -> None:
        self.upto = upto
        self.seconds = 0.0  # spent in the check itself (its lines are read by the walk)
        self.reader = LevelReader(tree_dir)
        try:
            # The daemon flushed its files before it gave `upto` (TreeKeeper.flushed_size): the
            # files hold at least that many leaves by now.
            self.stored = self.reader.size()
        except OSError:
            self.reader.close()
            raise
        self.leaves = LeafCheck(
            self.reader, self.stored if upto is None else min(self.stored, upto)
        )

    @classmethod
    def start(cls, tree_dir: Path | None, upto: int | None = None) -> TreeCheck | TreeResult:
        """The check of the tree in `tree_dir`, or the result saying why there is none."""
        if tree_dir is None or not (tree_dir / "level-00").is_file():
            return TreeResult(state="skipped", size=0, detail="no Merkle tree is kept")
        return cls(tree_dir, upto)

    def on_lines(self, lines: list[bytes]) -> None:
        started = time.perf_counter()
        self.leaves.feed(lines)
        self.seconds += time.perf_counter() - started

    def finish(self, chain: ChainResult, source: LogSource) -> TreeResult:
        """The verdict once the walk has fed the log's lines up to `chain.head_seq` (`source`:
        the same log, read again only to name a node that differs)."""
        started = time.perf_counter()
        try:
            if not chain.ok:
                return TreeResult(
                    state="skipped", size=0, detail="the log is damaged: see the chain"
                )
            size = min(self.leaves.limit, chain.head_seq)
            try:
                found = self.leaves.finish(size, source)
            except LogDamaged as exc:
                detail = f"the log is damaged: {exc.message}"
                return TreeResult(state="skipped", size=0, detail=detail)
        finally:
            self.reader.close()
        seconds = round(self.seconds + time.perf_counter() - started, 6)
        if found is not None:
            return TreeResult(
                state="mismatch",
                size=size,
                level=found.level,
                index=found.index,
                first_bad_leaf=found.first_leaf,
                detail=found.detail,
                seconds=seconds,
            )
        detail = f"{size} leaves equal the log's lines"
        if self.upto is None and self.stored > chain.head_seq:
            detail += f"; the tree holds {self.stored} (the next boot cuts it back to the log)"
        return TreeResult(state="ok", size=size, detail=detail, seconds=seconds)

    def close(self) -> None:
        """Release the tree's files without a verdict (the walk failed)."""
        self.reader.close()


def check_tree(
    tree_dir: Path | None, source: LogSource, chain: ChainResult, upto: int | None = None
) -> TreeResult:
    """Check the tree against `source` read after the chain walk (PostgreSQL's log table)."""
    check = TreeCheck.start(tree_dir, upto)
    if isinstance(check, TreeResult):
        return check
    if chain.ok:
        batch: list[bytes] = []
        try:
            for _, line in source.lines(0, min(check.leaves.limit, chain.head_seq)):
                batch.append(line[:-1])
                if len(batch) == CHUNK_LEAVES:
                    check.on_lines(batch)
                    batch = []
        except LogDamaged as exc:
            check.close()
            return TreeResult(state="skipped", size=0, detail=f"the log is damaged: {exc.message}")
        except BaseException:
            check.close()
            raise
        check.on_lines(batch)
    return check.finish(chain, source)


def check_chain_and_tree(
    log_dir: Path,
    tree_dir: Path | None,
    *,
    upto_seq: int | None = None,
    tree_upto: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ChainResult, TreeResult]:
    """The chain walk of the segment files, with the tree's check fed by it (check_chain's
    `upto_seq` and `progress`; the tree's `upto` is `tree_upto`)."""
    check = TreeCheck.start(tree_dir, tree_upto)
    if isinstance(check, TreeResult):
        return check_chain(log_dir, upto_seq=upto_seq, progress=progress), check
    try:
        chain = check_chain(log_dir, upto_seq=upto_seq, progress=progress, on_lines=check.on_lines)
    except BaseException:
        check.close()
        raise
    # The report's chain time is the walk's own, as without a tree: the tree's share is its.
    walk = round(max(chain.seconds - check.seconds, 0.0), 6)
    return msgspec.structs.replace(chain, seconds=walk), check.finish(chain, FileLogSource(log_dir))
