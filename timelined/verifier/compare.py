"""Entity-by-entity comparison of the state database (`main`) with a replay (`scratch`).

Both databases are attached to one connection that holds the state's read snapshot. Each table
is compared with two streaming joins on its primary key, evaluated by SQLite:

- state LEFT JOIN replay, keeping rows whose key is absent from the replay (`extra`) or whose
  columns differ by `IS NOT` (`changed`);
- replay rows whose key the state lacks (`missing`).

Every join is a scan of one table with a primary-key lookup into the other: nothing is sorted or
held in memory, so memory stays flat at any size, and only differing rows reach Python.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from timelined.api.verify import Difference, FieldDiff
from timelined.state.schema import SCHEMA_VERSION, migrate
from timelined.verifier.model import MAX_DIFFERENCES, MAX_TEXT

ENTITY_NAMES = {
    "meta": "meta",
    "conversations": "conversation",
    "contexts": "context",
    "blocks": "block",
    "focus": "focus",
    "crossrefs": "crossref",
    "retractions": "retraction",
}
SINGLETONS = frozenset({"meta", "focus"})  # one row, id = 1: named by the entity alone
_FTS = "blocks_fts"
_FETCH = 512


@dataclass(frozen=True, slots=True)
class Table:
    """One entity table: its primary key and columns as the current schema defines them."""

    name: str
    entity: str
    pk: str
    columns: tuple[str, ...]


class Differences:
    """Counts every difference, keeps the first `cap`."""

    def __init__(self, cap: int = MAX_DIFFERENCES) -> None:
        self.cap = cap
        self.items: list[Difference] = []
        self.total = 0

    def add(self, difference: Difference) -> None:
        self.total += 1
        if len(self.items) < self.cap:
            self.items.append(difference)

    def extend(self, other: Differences) -> None:
        """Add another collection's differences after these (counted all, kept up to `cap`)."""
        for difference in other.items:
            self.add(difference)
        self.total += other.total - len(other.items)


SchemaRow = tuple[str, str, str, str | None]  # type, name, tbl_name, sql


@cache
def expected_schema() -> tuple[tuple[SchemaRow, ...], tuple[Table, ...]]:
    """The schema this code creates (from a fresh in-memory database) and its entity tables."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        rows = _schema_rows(conn, "main")
        tables: list[Table] = []
        for type_, name, _tbl, sql in rows:
            if type_ != "table" or name.startswith(_FTS) or sql is None:
                continue
            info = conn.execute(f'PRAGMA main.table_info("{name}")').fetchall()
            pk = next(str(col[1]) for col in info if col[5] == 1)
            tables.append(
                Table(name, ENTITY_NAMES.get(name, name), pk, tuple(str(c[1]) for c in info))
            )
        return rows, tuple(tables)
    finally:
        conn.close()


def _schema_rows(conn: sqlite3.Connection, db: str) -> tuple[SchemaRow, ...]:
    cursor = conn.execute(
        f"SELECT type, name, tbl_name, sql FROM {db}.sqlite_master "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    )
    return tuple((str(r[0]), str(r[1]), str(r[2]), r[3]) for r in cursor)


def clip(value: Any) -> Any:
    """A value as a report keeps it: long text truncated, blobs described."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"{value[:MAX_TEXT]}… ({len(value)} characters)"
    if isinstance(value, bytes):
        return f"<blob of {len(value)} bytes: {value[:32].hex()}{'…' if len(value) > 32 else ''}>"
    return value


def compare_schema(conn: sqlite3.Connection, out: Differences) -> dict[str, tuple[str, ...]]:
    """Compare the state's schema with the expected one; returns the columns to compare per
    table (those both have), leaving out tables the state lacks."""
    expected_rows, tables = expected_schema()
    live = {(r[0], r[1]): r for r in _schema_rows(conn, "main")}
    want = {(r[0], r[1]): r for r in expected_rows}
    for key, row in want.items():
        found = live.get(key)
        if found is None:
            out.add(Difference(entity="schema", id=f"{key[0]} {key[1]}", kind="missing"))
        elif found[3] != row[3]:
            out.add(
                Difference(
                    entity="schema",
                    id=f"{key[0]} {key[1]}",
                    kind="changed",
                    fields=[FieldDiff("sql", clip(found[3]), clip(row[3]))],
                )
            )
    for key in live.keys() - want.keys():
        out.add(Difference(entity="schema", id=f"{key[0]} {key[1]}", kind="extra"))
    version = int(conn.execute("PRAGMA main.user_version").fetchone()[0])
    if version != SCHEMA_VERSION:
        out.add(
            Difference(
                entity="schema",
                id="user_version",
                kind="changed",
                fields=[FieldDiff("user_version", version, SCHEMA_VERSION)],
            )
        )
    columns: dict[str, tuple[str, ...]] = {}
    for table in tables:
        if ("table", table.name) not in live:
            continue
        present = {str(c[1]) for c in conn.execute(f'PRAGMA main.table_info("{table.name}")')}
        if table.pk in present:
            columns[table.name] = tuple(c for c in table.columns if c in present)
    return columns


def _rows(cursor: sqlite3.Cursor) -> Iterator[tuple[Any, ...]]:
    while True:
        batch = cursor.fetchmany(_FETCH)
        if not batch:
            return
        yield from batch


def _ident(table: Table, columns: tuple[str, ...], row: tuple[Any, ...]) -> tuple[str, Any]:
    """(id, key) naming a row: the entity's `id` column, and the primary key if it is another."""
    if table.name in SINGLETONS:
        return table.entity, None
    key = row[columns.index(table.pk)]
    if table.pk != "id" and "id" in columns:
        return str(row[columns.index("id")]), key
    return str(key), None


def compare_table(
    conn: sqlite3.Connection, table: Table, columns: tuple[str, ...], out: Differences
) -> None:
    """Stream the differences of one table into `out`."""
    pk = f'"{table.pk}"'
    cols = [f'"{c}"' for c in columns]
    n = len(columns)
    state_cols = ", ".join(f"s.{c}" for c in cols)
    log_cols = ", ".join(f"l.{c}" for c in cols)
    differ = " OR ".join(f"s.{c} IS NOT l.{c}" for c in cols if c != pk) or "0"
    name = f'"{table.name}"'
    changed_or_extra = conn.execute(
        f"SELECT {state_cols}, {log_cols}, l.{pk} IS NULL "
        f"FROM main.{name} AS s LEFT JOIN scratch.{name} AS l ON l.{pk} = s.{pk} "
        f"WHERE l.{pk} IS NULL OR {differ} ORDER BY s.{pk}"
    )
    for row in _rows(changed_or_extra):
        state, log = row[:n], row[n : 2 * n]
        ident, key = _ident(table, columns, state)
        if row[-1]:
            out.add(Difference(entity=table.entity, id=ident, key=key, kind="extra"))
            continue
        fields = [
            FieldDiff(column, clip(a), clip(b))
            for column, a, b in zip(columns, state, log, strict=True)
            if a != b
        ]
        out.add(Difference(entity=table.entity, id=ident, key=key, kind="changed", fields=fields))
    missing = conn.execute(
        f"SELECT {log_cols} FROM scratch.{name} AS l "
        f"WHERE NOT EXISTS (SELECT 1 FROM main.{name} AS s WHERE s.{pk} = l.{pk}) ORDER BY l.{pk}"
    )
    for row in _rows(missing):
        ident, key = _ident(table, columns, row)
        out.add(Difference(entity=table.entity, id=ident, key=key, kind="missing"))


# What a search document no block up to the index's position explains is reported as.
EXTRA_DOC = "a search document for a block the log does not have"
DOC_PAST_POSITION = "a search document past the index's recorded position (meta.fts_seq)"
MISSING_DOC = "the block has no document in the search index"


def read_fts_seq(conn: sqlite3.Connection) -> int | None:
    """The state snapshot's `meta.fts_seq` (how far its search index is); None if it has none."""
    try:
        row = conn.execute("SELECT fts_seq FROM main.meta WHERE id = 1").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such" not in str(exc):
            raise
        return None
    return row[0] if row is not None and isinstance(row[0], int) else None


def expected_fts_seq(state_fts_seq: int | None, snapshot_seq: int) -> int:
    """Up to where the search index must hold exactly the blocks: the state's own `fts_seq`
    when it is one the writer can leave (0 to the snapshot's last_seq: the writer indexes
    after its COMMITs), else the whole snapshot (and the meta row's comparison reports the
    value). A state whose index lags is not drift; a document past its position is."""
    if state_fts_seq is not None and 0 <= state_fts_seq <= snapshot_seq:
        return state_fts_seq
    return snapshot_seq if snapshot_seq >= 0 else 2**63 - 1


def compare_search_index(conn: sqlite3.Connection, out: Differences, indexed_upto: int) -> str:
    """Check that the state's FTS index holds one document per block of the replay up to
    `indexed_upto` (expected_fts_seq), no other.

    A read-only connection cannot run FTS5's `integrity-check` (it is an INSERT); the document
    set is read from the index's own `blocks_fts_docsize` table. Token-level checks need a
    writable copy (offline verification makes one).
    """
    has = conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'blocks_fts_docsize'"
    ).fetchone()
    if has is None:
        return "not checked: the state database has no search index"
    before = out.total
    missing = conn.execute(
        "SELECT l.seq, l.id FROM scratch.blocks AS l WHERE l.seq <= ? AND NOT EXISTS "
        "(SELECT 1 FROM main.blocks_fts_docsize AS d WHERE d.id = l.seq) ORDER BY l.seq",
        (indexed_upto,),
    )
    for seq, block_id in _rows(missing):
        out.add(
            Difference(
                entity="search index",
                id=str(block_id),
                key=seq,
                kind="missing",
                detail=MISSING_DOC,
            )
        )
    extra = conn.execute(
        "SELECT d.id, EXISTS (SELECT 1 FROM scratch.blocks AS l WHERE l.seq = d.id) "
        "FROM main.blocks_fts_docsize AS d WHERE d.id > ?1 OR NOT EXISTS "
        "(SELECT 1 FROM scratch.blocks AS l WHERE l.seq = d.id) ORDER BY d.id",
        (indexed_upto,),
    )
    for seq, block in _rows(extra):
        out.add(
            Difference(
                entity="search index",
                id=f"seq {seq}",
                key=seq,
                kind="extra",
                detail=DOC_PAST_POSITION if block else EXTRA_DOC,
            )
        )
    found = out.total - before
    return "documents checked: " + ("ok" if not found else f"{found} differences")


def blocks_table() -> Table:
    """The blocks table as the current schema defines it."""
    _, tables = expected_schema()
    return next(t for t in tables if t.name == "blocks")


def has_search_index(conn: sqlite3.Connection) -> bool:
    """Whether the state database has the search index's document table."""
    row = conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'blocks_fts_docsize'"
    ).fetchone()
    return row is not None


def compare_all(
    conn: sqlite3.Connection,
    out: Differences,
    progress: Callable[[int, int], None] | None = None,
    *,
    columns: dict[str, tuple[str, ...]] | None = None,
    blocks: BlockDiffs | None = None,
    indexed_upto: int = 2**63 - 1,
) -> str:
    """Schema, every entity table, then the search index's documents; returns the index note.

    `columns`: compare_schema's result, when the caller ran it already. `blocks`: the blocks
    and their search documents were compared while the replay ran (blocks.py); their
    differences are folded in where this function would have found them. `indexed_upto`:
    expected_fts_seq (without `blocks`; a BlockStream has its own).
    """
    if columns is None:
        columns = compare_schema(conn, out)
    _, tables = expected_schema()
    for done, table in enumerate(tables):
        if table.name in columns:
            if table.name == "blocks" and blocks is not None:
                blocks.fold(out)
            else:
                compare_table(conn, table, columns[table.name], out)
        if progress is not None:
            progress(done + 1, len(tables) + 1)
    if "blocks" not in columns:
        return "not checked: the state database has no blocks table"
    note = (
        compare_search_index(conn, out, indexed_upto)
        if blocks is None
        else blocks.fold_search_index(out)
    )
    if progress is not None:
        progress(len(tables) + 1, len(tables) + 1)
    return note


class BlockDiffs(Protocol):
    """What compare_all needs of a blocks comparison made elsewhere (blocks.BlockStream)."""

    def fold(self, out: Differences) -> None: ...

    def fold_search_index(self, out: Differences) -> str: ...
