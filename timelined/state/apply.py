"""apply(conn, record): the one place where an event becomes rows.

The writer, replay, recovery and the verifier all call this, so the state a daemon serves and
the state a replay of the log produces cannot differ by construction. `apply` trusts the event
(the engine checked it before logging it); it never reads the clock or draws random ids: every
value comes from the record, so replaying the same log gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import msgspec

from timelined import events as ev
from timelined.events import Record
from timelined.state.dbapi import DbConn

_json = msgspec.json.Encoder(order="deterministic")

FtsRows = list[tuple[int, str]]  # (rowid = the block's seq, content) for blocks_fts


def dump_json(value: Any) -> str:
    """JSON text as the state stores it: deterministic, so equal values give equal text."""
    return _json.encode(value).decode()


def set_meta(conn: DbConn, last_seq: int, last_hash: str) -> None:
    conn.execute("UPDATE meta SET last_seq = ?, last_hash = ? WHERE id = 1", (last_seq, last_hash))


def _set_focus(conn: DbConn, context_id: str | None, seq: int) -> None:
    conn.execute(
        "UPDATE focus SET context_id = ?1, seq = ?2, conversation_id = "
        "(SELECT conversation_id FROM contexts WHERE id = ?1) WHERE id = 1",
        (context_id, seq),
    )


def _set_status(conn: DbConn, r: Record, context_id: str, status: str) -> None:
    conn.execute(
        "UPDATE contexts SET status = ?, updated_at = ?, updated_seq = ? WHERE id = ?",
        (status, r.ts, r.seq, context_id),
    )


def _conversation_created(conn: DbConn, r: Record, e: ev.ConversationCreated) -> None:
    imported = dump_json(e.imported_from) if e.imported_from is not None else None
    conn.execute(
        "INSERT INTO conversations (id, name, root_context_id, status, metadata, imported_from, "
        "created_at, created_seq, updated_at, updated_seq) "
        "VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)",
        (
            e.conversation_id,
            e.name,
            e.root_context_id,
            dump_json(e.metadata),
            imported,
            r.ts,
            r.seq,
            r.ts,
            r.seq,
        ),
    )
    conn.execute(
        "INSERT INTO contexts (id, conversation_id, parent_id, status, reason, inherit_from, "
        "inherit_last, inherit_upto, tags, created_at, created_seq, updated_at, updated_seq) "
        "VALUES (?, ?, NULL, 'active', 'root', NULL, 0, 0, '[]', ?, ?, ?, ?)",
        (e.root_context_id, e.conversation_id, r.ts, r.seq, r.ts, r.seq),
    )
    _set_focus(conn, e.root_context_id, r.seq)


def _conversation_updated(conn: DbConn, r: Record, e: ev.ConversationUpdated) -> None:
    if e.name is not None:
        conn.execute("UPDATE conversations SET name = ? WHERE id = ?", (e.name, e.conversation_id))
    if e.metadata is not None:
        conn.execute(
            "UPDATE conversations SET metadata = ? WHERE id = ?",
            (dump_json(e.metadata), e.conversation_id),
        )
    _touch_conversation(conn, r, e.conversation_id)


def _touch_conversation(conn: DbConn, r: Record, conversation_id: str) -> None:
    conn.execute(
        "UPDATE conversations SET updated_at = ?, updated_seq = ? WHERE id = ?",
        (r.ts, r.seq, conversation_id),
    )


def _conversation_archived(conn: DbConn, r: Record, e: ev.ConversationArchived) -> None:
    conn.execute(
        "UPDATE conversations SET status = 'archived', archive_reason = ? WHERE id = ?",
        (e.reason, e.conversation_id),
    )
    _touch_conversation(conn, r, e.conversation_id)
    # A UI must not start inside an archived conversation: focus there is dropped.
    conn.execute(
        "UPDATE focus SET context_id = NULL, conversation_id = NULL, seq = ? "
        "WHERE id = 1 AND conversation_id = ?",
        (r.seq, e.conversation_id),
    )


def _context_spawned(conn: DbConn, r: Record, e: ev.ContextSpawned) -> None:
    conn.execute(
        "INSERT INTO contexts (id, conversation_id, parent_id, status, reason, inherit_from, "
        "inherit_last, inherit_upto, tags, created_at, created_seq, updated_at, updated_seq) "
        "VALUES (?, ?, ?, 'active', ?, ?, ?, ?, '[]', ?, ?, ?, ?)",
        (
            e.context_id,
            e.conversation_id,
            e.parent_id,
            e.reason,
            e.parent_id,
            e.inherit_last,
            e.parent_blocks,
            r.ts,
            r.seq,
            r.ts,
            r.seq,
        ),
    )
    _set_status(conn, r, e.parent_id, "paused")
    _set_focus(conn, e.context_id, r.seq)


def _context_paused(conn: DbConn, r: Record, e: ev.ContextPaused) -> None:
    _set_status(conn, r, e.context_id, "paused")


def _context_resumed(conn: DbConn, r: Record, e: ev.ContextResumed) -> None:
    _set_status(conn, r, e.context_id, "active")
    _set_focus(conn, e.context_id, r.seq)


def _context_merged(
    conn: DbConn, r: Record, e: ev.ContextMerged, fts: FtsRows | None = None
) -> None:
    _set_status(conn, r, e.context_id, "merged")
    metadata = {"merged_context_id": e.context_id, "merged_block_count": e.block_count}
    _insert_block(
        conn,
        r.seq,
        ev.BlockData(
            id=e.block_id,
            context_id=e.parent_id,
            role="system",
            content=e.summary,
            timestamp=r.ts,
            metadata=metadata,
        ),
        fts,
    )
    _set_status(conn, r, e.parent_id, "active")
    _set_focus(conn, e.parent_id, r.seq)


def _context_archived(conn: DbConn, r: Record, e: ev.ContextArchived) -> None:
    conn.execute(
        "UPDATE contexts SET status = 'archived', archive_reason = ?, updated_at = ?, "
        "updated_seq = ? WHERE id = ?",
        (e.reason, r.ts, r.seq, e.context_id),
    )
    row = conn.execute("SELECT context_id FROM focus WHERE id = 1").fetchone()
    if row is not None and row[0] == e.context_id:
        parent = conn.execute(
            "SELECT parent_id FROM contexts WHERE id = ?", (e.context_id,)
        ).fetchone()
        _set_focus(conn, parent[0] if parent else None, r.seq)


def _context_restored(conn: DbConn, r: Record, e: ev.ContextRestored) -> None:
    conn.execute(
        "UPDATE contexts SET status = 'paused', archive_reason = NULL, updated_at = ?, "
        "updated_seq = ? WHERE id = ?",
        (r.ts, r.seq, e.context_id),
    )


def _context_reparented(conn: DbConn, r: Record, e: ev.ContextReparented) -> None:
    conn.execute(
        "UPDATE contexts SET parent_id = ?, updated_at = ?, updated_seq = ? WHERE id = ?",
        (e.new_parent_id, r.ts, r.seq, e.context_id),
    )


def _context_focused(conn: DbConn, r: Record, e: ev.ContextFocused) -> None:
    _set_focus(conn, e.context_id, r.seq)


def _context_tagged(conn: DbConn, r: Record, e: ev.ContextTagged) -> None:
    conn.execute(
        "UPDATE contexts SET tags = ?, updated_at = ?, updated_seq = ? WHERE id = ?",
        (dump_json(e.tags), r.ts, r.seq, e.context_id),
    )


def _crossref_added(conn: DbConn, r: Record, e: ev.CrossRefAdded) -> None:
    conn.execute(
        "INSERT INTO crossrefs (id, from_id, to_id, kind, note, created_at, created_seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (e.ref_id, e.from_id, e.to_id, e.kind, e.note, r.ts, r.seq),
    )


def _crossref_revoked(conn: DbConn, r: Record, e: ev.CrossRefRevoked) -> None:
    conn.execute("UPDATE crossrefs SET revoked_seq = ? WHERE id = ?", (r.seq, e.ref_id))


# The columns of a block row, in the schema's order (tests/state check it against the schema).
BLOCK_COLUMNS = (
    "seq",
    "id",
    "context_id",
    "position",
    "role",
    "content",
    "timestamp",
    "time_taken",
    "tokens_input",
    "tokens_output",
    "metadata",
    "sub_blocks",
)
BlockRow = tuple[Any, ...]  # the values of BLOCK_COLUMNS


def _block_row(seq: int, b: ev.BlockData, position: int | None) -> BlockRow:
    """A block's row, in BLOCK_COLUMNS order (`position` None: the INSERT computes it)."""
    return (
        seq,
        b.id,
        b.context_id,
        position,
        b.role,
        b.content,
        b.timestamp,
        b.time_taken,
        b.tokens_input,
        b.tokens_output,
        # Most blocks have neither: their JSON text without an encoder call (the same text).
        dump_json(b.metadata) if b.metadata else "{}",
        dump_json(b.sub_blocks) if b.sub_blocks else "[]",
    )


class BlockRows:
    """Blocks handed on as rows instead of inserted: the verifier's replay (verifier/blocks.py).

    A connection with a `block_rows` attribute holding one of these gets no block rows from
    `apply`: each new block's full row (BLOCK_COLUMNS) goes to `emit`, in seq order. The
    position is what the INSERT's subquery computes (one more than the context's highest), kept
    per context here: blocks are never deleted or moved, so it is the context's block count.
    Only for a replay from an empty database (the positions start at 0).
    """

    __slots__ = ("emit", "positions")

    def __init__(self, emit: Callable[[BlockRow], None]) -> None:
        self.emit = emit
        self.positions: dict[str, int] = {}

    def add(self, seq: int, b: ev.BlockData) -> None:
        position = self.positions.get(b.context_id, 0) + 1
        self.positions[b.context_id] = position
        self.emit(_block_row(seq, b, position))


# A block's row, in BLOCK_COLUMNS order. ?4, the position, is not bound to a value: the
# subquery computes it (one more than the context's highest). benchmarks/parts/raw.py times it.
INSERT_BLOCK = (
    "INSERT INTO blocks (seq, id, context_id, position, role, content, timestamp, time_taken, "
    "tokens_input, tokens_output, metadata, sub_blocks) VALUES (?1, ?2, ?3, "
    "(SELECT coalesce(max(position), 0) + 1 FROM blocks WHERE context_id = ?3), "
    "?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
)


class StagedBlocks:
    """Block rows staged by the writer and inserted together (`insert`), fewer statements.

    Each statement costs its call and two releases of the GIL (SQLite's step, then its reset),
    and at 64 connections the event loop takes the GIL at each release; a batch's appends in
    one statement were ~13 µs less of the writer's CPU per append (docs/performance.md). The
    row is `_insert_block`'s with its position bound (the writer's cache knows it: one more
    than its context's count) instead of the subquery computing it. The writer inserts what is
    staged before anything reads or writes the state after it (writer/engine.py).
    """

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[BlockRow] = []

    def __len__(self) -> int:
        return len(self.rows)

    def stage(self, seq: int, b: ev.BlockData, position: int, fts: FtsRows) -> None:
        """Stage a new block's row; its full-text row goes to `fts`, as `apply` puts it."""
        self.rows.append(_block_row(seq, b, position))
        fts.append((seq, b.content))

    def insert(self, conn: DbConn) -> None:
        """Insert what is staged, in seq order: a statement per power of two of rows (at most
        INSERT_ROWS_MAX rows each; the texts stay in the connection's statement cache)."""
        rows, done, left = self.rows, 0, len(self.rows)
        self.rows = []
        while left:
            n = 1 << (min(left, INSERT_ROWS_MAX).bit_length() - 1)
            conn.execute(_INSERT_ROWS[n], list(chain.from_iterable(rows[done : done + n])))
            done += n
            left -= n

    def clear(self) -> None:
        self.rows = []


# Multi-row INSERTs of block rows, all positions bound: 1, 2, 4, ... INSERT_ROWS_MAX rows (768
# parameters at most: SQLite's limit is 32,766, PostgreSQL's 65,535).
INSERT_ROWS_MAX = 64
_INSERT_ROWS = {
    n: f"INSERT INTO blocks ({', '.join(BLOCK_COLUMNS)}) VALUES "
    + ", ".join([f"({', '.join('?' * len(BLOCK_COLUMNS))})"] * n)
    for n in (1 << i for i in range(INSERT_ROWS_MAX.bit_length()))
}


def _insert_block(conn: DbConn, seq: int, b: ev.BlockData, fts: FtsRows | None = None) -> None:
    rows: BlockRows | None = getattr(conn, "block_rows", None)
    if rows is not None:
        rows.add(seq, b)
        return
    conn.execute(INSERT_BLOCK, _block_row(seq, b, None))
    # The verifier's scratch replays compare blocks.content itself and check the live search
    # index on their own: their connections say `search_index = False` (verifier/replay.py).
    if not getattr(conn, "search_index", True):
        return
    if fts is None:
        conn.execute("INSERT INTO blocks_fts (rowid, content) VALUES (?, ?)", (seq, b.content))
    else:
        fts.append((seq, b.content))


def insert_fts(conn: DbConn, rows: FtsRows) -> None:
    """Index blocks collected by `apply(..., fts=rows)`, all at once."""
    conn.executemany("INSERT INTO blocks_fts (rowid, content) VALUES (?, ?)", rows)


def index_blocks(conn: DbConn, after_seq: int, upto_seq: int) -> None:
    """Index every block with `after_seq < seq <= upto_seq` and record the index's position
    (`meta.fts_seq = upto_seq`), inside the caller's transaction.

    The rows come from the blocks table itself, in one statement: the writer's deferred index
    (writer/engine.py) and the boot's filling of a crash's gap (replay.apply_records) are the
    same code, and need nothing kept in memory between the blocks' commit and their indexing.
    Exactly the blocks up to `fts_seq` have a document: the verifier checks that (compare.py).
    """
    if upto_seq > after_seq:
        conn.execute(
            "INSERT INTO blocks_fts (rowid, content) SELECT seq, content FROM blocks "
            "WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after_seq, upto_seq),
        )
    set_fts_seq(conn, upto_seq)


def set_fts_seq(conn: DbConn, fts_seq: int) -> None:
    conn.execute("UPDATE meta SET fts_seq = ? WHERE id = 1", (fts_seq,))


def _block_appended(
    conn: DbConn, r: Record, e: ev.BlockAppended, fts: FtsRows | None = None
) -> None:
    _insert_block(conn, r.seq, e.block, fts)


def _block_retracted(conn: DbConn, r: Record, e: ev.BlockRetracted) -> None:
    # A row of its own, never a change to the block's row: blocks stay immutable (the
    # verifier's replay hands block rows on without inserting them: BlockRows), and the
    # full-text row stays too; the reads leave retracted blocks out (state/queries.py).
    conn.execute(
        "INSERT INTO retractions (block_id, context_id, reason, retracted_at, seq) "
        "VALUES (?, ?, ?, ?, ?)",
        (e.block_id, e.context_id, e.reason, r.ts, r.seq),
    )


_Handler = Callable[[DbConn, Record, Any], None]

_HANDLERS: dict[type, _Handler] = {
    ev.ConversationCreated: _conversation_created,
    ev.ConversationUpdated: _conversation_updated,
    ev.ConversationArchived: _conversation_archived,
    ev.ContextSpawned: _context_spawned,
    ev.ContextPaused: _context_paused,
    ev.ContextResumed: _context_resumed,
    ev.ContextMerged: _context_merged,
    ev.ContextArchived: _context_archived,
    ev.ContextRestored: _context_restored,
    ev.ContextReparented: _context_reparented,
    ev.ContextFocused: _context_focused,
    ev.ContextTagged: _context_tagged,
    ev.CrossRefAdded: _crossref_added,
    ev.CrossRefRevoked: _crossref_revoked,
    ev.BlockAppended: _block_appended,
    ev.BlockRetracted: _block_retracted,
}

assert set(_HANDLERS) == set(ev.EVENT_CLASSES), "every event type needs exactly one handler"

# The handlers that create a block, and so a full-text row.
_WITH_BLOCK: dict[type, Callable[[DbConn, Record, Any, FtsRows], None]] = {
    ev.BlockAppended: _block_appended,
    ev.ContextMerged: _context_merged,
}


def apply(conn: DbConn, record: Record, fts: FtsRows | None = None) -> None:
    """Turn one logged event into rows (inside the caller's transaction).

    With `fts`, a new block's full-text row is appended to that list instead of inserted, and
    the caller indexes it later: the writer counts the rows and indexes the committed blocks
    after the COMMIT, in transactions of their own (`index_blocks`; writer/engine.py). FTS5
    flushes its pending terms at every savepoint, and the index is off the append's path.
    `insert_fts` inserts such rows at once (benchmarks/parts/raw.py's ceiling does).
    """
    event = record.event
    if fts is not None and type(event) in _WITH_BLOCK:
        _WITH_BLOCK[type(event)](conn, record, event, fts)
    else:
        _HANDLERS[type(event)](conn, record, event)
