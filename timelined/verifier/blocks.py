"""The blocks, compared as the replay makes them: a merge by seq, no scratch rows.

Blocks are nearly every event of a log, and inserting them into the scratch database (a 12-column
row, two indexes, the position subquery) and joining them back was most of a verification's
time. They need neither: a block is written once and never changed, the replay makes them in
seq order, and the state's `blocks` table is read in seq order (its rowid), so the two streams
are merged as they go.

The rows come from `state.apply` all the same: the replay's connection carries a
`state.apply.BlockRows` (its `block_rows` attribute), so `apply` hands each new block's full
row to `BlockStream.emit` instead of inserting it; every other table is replayed into the
scratch database and compared in SQL (compare.py).

What is reported is what `compare.compare_table` and `compare.compare_search_index` report for
the blocks, in the same order: changed and extra rows by seq, then missing ones; then, for the
search index, blocks without a document, then documents without a block. Memory stays flat: one
state row at a time (the cursor is the iterator), and at most `cap` kept differences of each kind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from timelined.api.verify import Difference, FieldDiff
from timelined.state.apply import BLOCK_COLUMNS, BlockRow
from timelined.verifier.compare import (
    DOC_PAST_POSITION,
    EXTRA_DOC,
    MISSING_DOC,
    Differences,
    Table,
    _ident,
    clip,
)

_SEQ = BLOCK_COLUMNS.index("seq")
_ID = BLOCK_COLUMNS.index("id")


class BlockStream:
    """Merges the replay's block rows (`emit`, in seq order) with the state's `blocks` rows and,
    if `search_index`, with the state's search documents (`blocks_fts_docsize`), which must be
    exactly the blocks up to `indexed_upto` (compare.expected_fts_seq)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        table: Table,
        columns: tuple[str, ...],
        *,
        search_index: bool,
        cap: int,
        indexed_upto: int = 2**63 - 1,
    ) -> None:
        assert table.pk == "seq" and table.name == "blocks"
        self.table = table
        self.columns = columns
        self.rows = Differences(cap)  # changed and extra, by seq
        self.missing = Differences(cap)
        self.fts_missing: Differences | None = Differences(cap) if search_index else None
        self.fts_extra = Differences(cap)
        self.error: sqlite3.DatabaseError | None = None
        self.indexed_upto = indexed_upto
        self._key = columns.index("seq")
        if columns == BLOCK_COLUMNS:
            self._pick = None
        else:
            indexes = [BLOCK_COLUMNS.index(c) for c in columns]
            self._pick = lambda row: tuple(row[i] for i in indexes)
        names = ", ".join(f'"{c}"' for c in columns)
        # The cursors themselves are the iterators (one SQLite step per row, no Python frame).
        self._state: Iterator[tuple[Any, ...]] | None = None
        self._docs: Iterator[tuple[Any, ...]] | None = None
        self._s: tuple[Any, ...] | None = None
        self._d: int | None = None
        try:
            self._state = conn.execute(f'SELECT {names} FROM main.blocks ORDER BY "seq"')
            self._s = next(self._state, None)
            if search_index:
                self._docs = conn.execute("SELECT id FROM main.blocks_fts_docsize ORDER BY id")
                self._d = self._next_doc()
        except sqlite3.DatabaseError as exc:
            self._fail(exc)

    # --- the replay's side ------------------------------------------------------------------

    def emit(self, row: BlockRow) -> None:
        """The replay made this block (rows arrive in increasing seq)."""
        if self.error is not None:
            return
        try:
            self._row(row)
            if self._docs is not None:
                self._doc(row[_SEQ], row)
        except sqlite3.DatabaseError as exc:
            # The state database cannot be read: reported as such once the replay is over
            # (not as a failure of the scratch replay, which this runs inside of).
            self._fail(exc)

    def finish(self) -> None:
        """The replay is over: what is left of the state's rows and documents is extra.
        Raises the state database's read error, if there was one."""
        if self.error is not None:
            raise self.error
        while self._s is not None:
            self._extra(self._s)
            self._s = self._next_state()
        while self._d is not None:
            self._extra_doc(self._d)
            self._d = self._next_doc()

    def fold(self, out: Differences) -> None:
        """The blocks' differences, in compare_table's order."""
        out.extend(self.rows)
        out.extend(self.missing)

    def fold_search_index(self, out: Differences) -> str:
        """The search index's differences, in compare_search_index's order; returns its note."""
        if self.fts_missing is None:
            return "not checked: the state database has no search index"
        out.extend(self.fts_missing)
        out.extend(self.fts_extra)
        found = self.fts_missing.total + self.fts_extra.total
        return "documents checked: " + ("ok" if not found else f"{found} differences")

    # --- the merge ----------------------------------------------------------------------------

    def _row(self, row: BlockRow) -> None:
        seq = row[_SEQ]
        s = self._s
        k = self._key
        state = self._state
        assert state is not None
        while s is not None:
            key = s[k]
            if isinstance(key, int | float) and key >= seq:
                break
            # A lower seq, or no number at all (SQLite sorts NULL first, text and blobs last;
            # no replayed block can have such a key): a row the replay does not have.
            self._extra(s)
            s = next(state, None)
        want = row if self._pick is None else self._pick(row)
        if s is not None and s[k] == seq:
            if s != want:
                self._changed(s, want)
            s = next(state, None)
        else:
            ident, key = _ident(self.table, self.columns, want)
            self.missing.add(
                Difference(entity=self.table.entity, id=ident, key=key, kind="missing")
            )
        self._s = s

    def _doc(self, seq: int, row: BlockRow) -> None:
        d = self._d
        while d is not None and d < seq:
            self._extra_doc(d)
            d = self._next_doc()
        if d == seq:
            if seq > self.indexed_upto:
                self._extra_doc(d, DOC_PAST_POSITION)
            d = self._next_doc()
        elif seq <= self.indexed_upto:
            assert self.fts_missing is not None
            self.fts_missing.add(
                Difference(
                    entity="search index",
                    id=str(row[_ID]),
                    key=seq,
                    kind="missing",
                    detail=MISSING_DOC,
                )
            )
        self._d = d

    def _changed(self, state: tuple[Any, ...], log: tuple[Any, ...]) -> None:
        ident, key = _ident(self.table, self.columns, state)
        fields = [
            FieldDiff(column, clip(a), clip(b))
            for column, a, b in zip(self.columns, state, log, strict=True)
            if a != b
        ]
        self.rows.add(
            Difference(entity=self.table.entity, id=ident, key=key, kind="changed", fields=fields)
        )

    def _extra(self, state: tuple[Any, ...]) -> None:
        ident, key = _ident(self.table, self.columns, state)
        self.rows.add(Difference(entity=self.table.entity, id=ident, key=key, kind="extra"))

    def _extra_doc(self, seq: int, detail: str = EXTRA_DOC) -> None:
        self.fts_extra.add(
            Difference(
                entity="search index",
                id=f"seq {seq}",
                key=seq,
                kind="extra",
                detail=detail,
            )
        )

    def _next_state(self) -> tuple[Any, ...] | None:
        assert self._state is not None
        return next(self._state, None)

    def _next_doc(self) -> int | None:
        assert self._docs is not None
        row = next(self._docs, None)
        return None if row is None else int(row[0])

    def _fail(self, exc: sqlite3.DatabaseError) -> None:
        self.error = exc
        self._s = self._d = None
        self._state = self._docs = None
