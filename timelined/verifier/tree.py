"""The Merkle tree's check: its stored hashes recomputed from the log (docs/transparency.md).

Run after the chain walk, in the same worker (child process or thread): the tree is read
through its own read-only descriptors while the daemon appends, one bounded buffer per level;
the log through a `LogSource`: the segment files (`FileLogSource`), or on PostgreSQL the log
table (`pgstore.logsource.TableLogSource`, on the run's own connection). Memory: one hash per
level.
"""

from __future__ import annotations

import time
from pathlib import Path

from timelined.api.verify import ChainResult, TreeResult
from timelined.auditlog.source import LogSource
from timelined.errors import LogDamaged
from timelined.treestore.levels import LevelReader
from timelined.treestore.logtree import check_against_log


def check_tree(
    tree_dir: Path | None, source: LogSource, chain: ChainResult, upto: int | None = None
) -> TreeResult:
    """Check the tree's first leaves: as many as `upto` (the tree's size at the run's start,
    in the daemon), the files hold and the intact chain reaches."""
    started = time.perf_counter()
    if tree_dir is None or not (tree_dir / "level-00").is_file():
        return TreeResult(state="skipped", size=0, detail="no Merkle tree is kept")
    if not chain.ok:
        return TreeResult(state="skipped", size=0, detail="the log is damaged: see the chain")
    reader = LevelReader(tree_dir)
    try:
        stored = reader.size()
        size = min(stored, chain.head_seq if upto is None else upto, chain.head_seq)
        try:
            found = check_against_log(reader, size, source)
        except LogDamaged as exc:
            return TreeResult(state="skipped", size=0, detail=f"the log is damaged: {exc.message}")
    finally:
        reader.close()
    seconds = round(time.perf_counter() - started, 6)
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
    if upto is None and stored > chain.head_seq:
        detail += f"; the tree holds {stored} (the next boot cuts it back to the log)"
    return TreeResult(state="ok", size=size, detail=detail, seconds=seconds)
