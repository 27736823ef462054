"""Every query, written once as a plain function over a connection (`DbConn`: an sqlite3
connection, or pgstore's PostgreSQL one, which translates the SQL: pgstore/sql.py).

The writer calls these for its checks on its own connection; the daemon's readers run the same
functions on aiosqlite read-only connections (`reads.py`); replay, the verifier and the tests use
them directly. Cursors for paging are positions and seqs, which only ever grow, so a page never
repeats or skips a row while writers append.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from timelined.api.model import (
    Block,
    Context,
    Conversation,
    ConversationStats,
    CrossRef,
    Focus,
    HistoryBlock,
    SearchHit,
    StartupState,
)
from timelined.errors import BadQuery, LimitExceeded
from timelined.events import SubBlock
from timelined.replies import REPLY_ENVELOPE, ReplyBudget, item_size, json_size, text_size
from timelined.state.dbapi import DbConn, dialect_of

T = TypeVar("T")

_meta_decoder = msgspec.json.Decoder(dict[str, Any])
_tags_decoder = msgspec.json.Decoder(list[str])
_subs_decoder = msgspec.json.Decoder(list[SubBlock])

_CONVERSATION_COLUMNS = (
    "id, name, root_context_id, status, created_at, updated_at, metadata, archive_reason, "
    "imported_from"
)


def _conversation(row: sqlite3.Row | tuple[Any, ...]) -> Conversation:
    return Conversation(
        id=row[0],
        name=row[1],
        root_context_id=row[2],
        status=row[3],
        created_at=row[4],
        updated_at=row[5],
        metadata=_meta_decoder.decode(row[6]),
        archive_reason=row[7],
        imported_from=_meta_decoder.decode(row[8]) if row[8] is not None else None,
    )


_CONTEXT_COLUMNS = (
    "c.id, c.conversation_id, c.parent_id, c.status, c.reason, c.created_at, c.updated_at, "
    "c.inherit_from, c.inherit_last, "
    "(SELECT coalesce(max(position), 0) FROM blocks WHERE context_id = c.id), "
    "c.archive_reason, c.tags"
)


def _context(
    row: sqlite3.Row | tuple[Any, ...],
    crossrefs: list[CrossRef] | None = None,
    *,
    omitted: bool = False,
) -> Context:
    return Context(
        id=row[0],
        conversation_id=row[1],
        parent_id=row[2],
        status=row[3],
        reason=row[4],
        created_at=row[5],
        updated_at=row[6],
        inherit_from=row[7],
        inherit_last=row[8],
        block_count=row[9],
        archive_reason=row[10],
        tags=_tags_decoder.decode(row[11]),
        crossrefs=crossrefs or [],
        crossrefs_omitted=omitted,
    )


_BLOCK_COLUMNS = (
    "id, context_id, role, content, timestamp, seq, position, time_taken, tokens_input, "
    "tokens_output, metadata, sub_blocks"
)


def _block(row: sqlite3.Row | tuple[Any, ...]) -> Block:
    # Most blocks have no metadata and no sub-blocks (stored as '{}' and '[]'): no decode then.
    metadata = row[10]
    subs = row[11]
    return Block(
        id=row[0],
        context_id=row[1],
        role=row[2],
        content=row[3],
        timestamp=row[4],
        seq=row[5],
        position=row[6],
        time_taken=row[7],
        tokens_input=row[8],
        tokens_output=row[9],
        metadata={} if metadata == "{}" else _meta_decoder.decode(metadata),
        sub_blocks=[] if subs == "[]" else _subs_decoder.decode(subs),
    )


# What a block costs in a reply besides its texts: ids, role, timestamps, numbers, JSON keys.
_BLOCK_OVERHEAD = 384


def _reply_bytes(row: sqlite3.Row | tuple[Any, ...]) -> int:
    """What a block row takes in a reply, in bytes: its content as a JSON string exactly, its
    metadata and sub-blocks (JSON text already) by their UTF-8 length."""
    return json_size(row[3]) + text_size(row[10]) + text_size(row[11]) + _BLOCK_OVERHEAD


# --- conversations -----------------------------------------------------------------------------


def get_conversation(conn: DbConn, id: str) -> Conversation | None:
    row = conn.execute(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (id,)
    ).fetchone()
    return _conversation(row) if row else None


def conversation_exists(conn: DbConn, id: str) -> bool:
    return conn.execute("SELECT 1 FROM conversations WHERE id = ?", (id,)).fetchone() is not None


def list_conversations(
    conn: DbConn,
    *,
    include_archived: bool,
    limit: int,
    after: int | None,
    name: str | None = None,
    budget: ReplyBudget | None = None,
) -> tuple[list[Conversation], int | None]:
    """A page in creation order; the second value is the cursor of the next page, if any.
    With `name`, only the conversations of exactly that name. With a `budget`, a page stops
    early (with a cursor) before its reply outgrows it: metadata may make a conversation big."""
    where = "created_seq > ?" + ("" if include_archived else " AND status != 'archived'")
    params: list[Any] = [after or 0]
    if name is not None:
        where += " AND name = ?"
        params.append(name)
    rows = conn.execute(
        f"SELECT {_CONVERSATION_COLUMNS}, created_seq FROM conversations WHERE {where} "
        "ORDER BY created_seq LIMIT ?",
        (*params, limit + 1),
    )
    return _page(rows, limit, _conversation, budget)


def _page(
    rows: Iterable[sqlite3.Row | tuple[Any, ...]],
    limit: int | None,
    make: Callable[[Any], T | None],
    budget: ReplyBudget | None,
) -> tuple[list[T], int | None]:
    """Up to `limit` items of `rows` (read one at a time: a page that stops early reads no
    more), and the cursor after the last one (each row's last column) when any remain.
    `make` returns None for an item it found too large for what is left of `budget`."""
    page: list[T] = []
    last: int | None = None
    for row in rows:
        if limit is not None and len(page) == limit:
            return page, last
        item = make(row)
        if item is None or (budget is not None and not budget.add(item_size(item))):
            return page, last
        page.append(item)
        last = int(row[-1])
    return page, None


# --- contexts ----------------------------------------------------------------------------------


_CROSSREFS = (
    "SELECT id, from_id, to_id, kind, note, created_at, created_seq FROM crossrefs "
    "WHERE (from_id = ?1 OR to_id = ?1) AND revoked_seq IS NULL AND created_seq > ?2 "
    "ORDER BY created_seq"
)


def _crossref(r: Any) -> CrossRef:
    return CrossRef(id=r[0], from_id=r[1], to_id=r[2], kind=r[3], note=r[4], created_at=r[5])


def _crossrefs_of(
    conn: DbConn, context_id: str, budget: ReplyBudget | None = None
) -> list[CrossRef]:
    """The context's live cross-references; with a `budget`, LimitExceeded as soon as they
    outgrow it (read one at a time: a context may hold thousands of 64 KiB notes)."""
    refs = []
    for r in conn.execute(_CROSSREFS, (context_id, 0)):
        ref = _crossref(r)
        if budget is not None:
            budget.take(item_size(ref))
        refs.append(ref)
    return refs


def crossrefs_page(
    conn: DbConn,
    context_id: str,
    *,
    after: int | None = None,
    limit: int | None = None,
    budget: ReplyBudget | None = None,
) -> tuple[list[CrossRef], int | None]:
    """The context's live cross-references (from it and to it) added after seq `after`, in
    the order they were added, at most `limit` and as many as `budget` holds; the cursor of
    the rest, if any."""
    sql = _CROSSREFS if limit is None else _CROSSREFS + " LIMIT ?3"
    args = (context_id, after or 0) if limit is None else (context_id, after or 0, limit + 1)
    return _page(conn.execute(sql, args), limit, _crossref, budget)


# The bytes of a context's live cross-references in a reply, each as `item_size` counts it:
# the quoted strings (their escapes included: json_quote and to_json escape as msgspec does)
# plus the keys, colons, commas and braces, which are the same for every reference.
_CROSSREF_FRAME = item_size(CrossRef(id="", from_id="", to_id="", kind="", note="", created_at=""))
_QUOTED = {
    "sqlite": "length(CAST(json_quote({}) AS BLOB))",
    "postgresql": "octet_length(to_json({})::text)",
}


def crossref_bytes(conn: DbConn, context_id: str) -> int:
    """What the context's live cross-references (either way) take of a `GetContext` reply."""
    quoted = _QUOTED[dialect_of(conn)]
    # Each string's quotes are counted by the frame as well as by its quoted length.
    per_row = " + ".join(
        quoted.format(c) for c in ("id", "from_id", "to_id", "kind", "note", "created_at")
    )
    row = conn.execute(
        f"SELECT coalesce(sum({per_row}), 0), count(*) FROM crossrefs "
        "WHERE (from_id = ?1 OR to_id = ?1) AND revoked_seq IS NULL",
        (context_id,),
    ).fetchone()
    return int(row[0]) + int(row[1]) * (_CROSSREF_FRAME - 12)


def get_context(
    conn: DbConn, id: str, *, crossrefs: bool = True, reply_bytes: int | None = None
) -> Context | None:
    """The context (with its cross-references unless `crossrefs` is False). `reply_bytes`: the
    reply's bound; cross-references that would pass it are not read past it, and the context
    comes without them (`crossrefs_omitted`: ListCrossRefs pages them)."""
    row = conn.execute(
        f"SELECT {_CONTEXT_COLUMNS} FROM contexts c WHERE c.id = ?", (id,)
    ).fetchone()
    if row is None:
        return None
    if not crossrefs:
        return _context(row, None)
    if reply_bytes is None:
        return _context(row, _crossrefs_of(conn, id))
    budget = ReplyBudget(reply_bytes)
    budget.take(item_size(_context(row, None)))  # its own fields: tags, reason
    try:
        return _context(row, _crossrefs_of(conn, id, budget))
    except LimitExceeded:  # read no further: ListCrossRefs pages them
        return _context(row, None, omitted=True)


def context_exists(conn: DbConn, id: str) -> bool:
    return conn.execute("SELECT 1 FROM contexts WHERE id = ?", (id,)).fetchone() is not None


def get_tree(conn: DbConn, conversation_id: str) -> list[Context]:
    """Every context of a conversation, in creation order (the root first)."""
    return tree_page(conn, conversation_id)[0]


def tree_page(
    conn: DbConn,
    conversation_id: str,
    *,
    after: int | None = None,
    budget: ReplyBudget | None = None,
    omit_crossrefs: bool = False,
) -> tuple[list[Context], int | None]:
    """The contexts created after seq `after`, in creation order, as many as `budget` holds;
    the cursor of the rest, if any (a tree of many sidebars, tags and cross-references can
    outgrow one reply). A context whose cross-references do not fit a page alone is refused
    (LimitExceeded), or with `omit_crossrefs` comes without them (`crossrefs_omitted`)."""
    rows = conn.execute(
        f"SELECT {_CONTEXT_COLUMNS}, c.created_seq FROM contexts c "
        "WHERE c.conversation_id = ? AND c.created_seq > ? ORDER BY c.created_seq",
        (conversation_id, after or 0),
    )

    def make(r: Any) -> Context | None:
        if budget is None:
            return _context(r, _crossrefs_of(conn, r[0]))
        # The context's cross-references are read against what is left of the page, so that
        # one with many is not read whole only to end the page (or be refused) after.
        room = ReplyBudget(budget.maximum - budget.used + REPLY_ENVELOPE)
        try:
            room.take(item_size(_context(r, None)))
            return _context(r, _crossrefs_of(conn, r[0], room))
        except LimitExceeded:
            if budget.count == 0:
                if omit_crossrefs:
                    return _context(r, None, omitted=True)  # `add` refuses it if too large
                raise
            budget.full = True
            return None

    return _page(rows, None, make, budget)


def ancestors(conn: DbConn, context_id: str) -> list[str]:
    """The context's id and its ancestors' ids, up to the root."""
    rows = conn.execute(
        "WITH RECURSIVE up(id, parent_id) AS ("
        " SELECT id, parent_id FROM contexts WHERE id = ?"
        " UNION ALL SELECT c.id, c.parent_id FROM contexts c JOIN up ON c.id = up.parent_id)"
        " SELECT id FROM up",
        (context_id,),
    ).fetchall()
    return [r[0] for r in rows]


def own_block_count(conn: DbConn, context_id: str) -> int:
    row = conn.execute(
        "SELECT coalesce(max(position), 0) FROM blocks WHERE context_id = ?", (context_id,)
    ).fetchone()
    return int(row[0])


def get_crossref(conn: DbConn, id: str) -> CrossRef | None:
    r = conn.execute(
        "SELECT id, from_id, to_id, kind, note, created_at FROM crossrefs "
        "WHERE id = ? AND revoked_seq IS NULL",
        (id,),
    ).fetchone()
    if r is None:
        return None
    return CrossRef(id=r[0], from_id=r[1], to_id=r[2], kind=r[3], note=r[4], created_at=r[5])


# --- blocks ------------------------------------------------------------------------------------

# Retracted blocks (event `block.retracted`) keep their rows, positions and full-text rows:
# every read that shows a context's blocks leaves them out with this clause (one small
# subquery over the context's retractions, by index) instead of anything being deleted.
_VISIBLE = "id NOT IN (SELECT block_id FROM retractions WHERE context_id = ?)"


def is_retracted(conn: DbConn, block_id: str) -> bool:
    found = conn.execute("SELECT 1 FROM retractions WHERE block_id = ?", (block_id,))
    return found.fetchone() is not None


def _retracted_upto(conn: DbConn, context_id: str, upto: int) -> int:
    """How many of the context's blocks at positions <= upto are retracted."""
    row = conn.execute(
        "SELECT count(*) FROM retractions r JOIN blocks b ON b.id = r.block_id "
        "WHERE r.context_id = ? AND b.position <= ?",
        (context_id, upto),
    ).fetchone()
    return int(row[0])


def get_block(conn: DbConn, id: str) -> Block | None:
    row = conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE id = ?", (id,)).fetchone()
    return _block(row) if row else None


def list_blocks(
    conn: DbConn,
    context_id: str,
    *,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    roles: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    budget: ReplyBudget | None = None,
    include_retracted: bool = False,
) -> tuple[list[Block], int | None]:
    """Keyset page of a context's own blocks by position (retracted ones left out unless
    `include_retracted`).

    Forward (default, or `after`): positions ascending, next cursor = last position. Backward
    (`before`): the `limit` blocks just before `before`, returned ascending; the next cursor is
    the first position, to pass as `before` for the page before it. With a `budget`, a page
    holds fewer than `limit` blocks (and a cursor) when more would not fit; never none.
    """
    clauses = ["context_id = ?"]
    params: list[Any] = [context_id]
    if not include_retracted:
        clauses.append(_VISIBLE)
        params.append(context_id)
    if after is not None:
        clauses.append("position > ?")
        params.append(after)
    if before is not None:
        clauses.append("position < ?")
        params.append(before)
    if roles:
        clauses.append(f"role IN ({','.join('?' * len(roles))})")
        params.extend(roles)
    if since is not None:
        clauses.append("timestamp >= ?")
        params.append(since)
    if until is not None:
        clauses.append("timestamp < ?")
        params.append(until)
    backward = before is not None and after is None
    order = "DESC" if backward else "ASC"
    cursor = conn.execute(
        f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE {' AND '.join(clauses)} "
        f"ORDER BY position {order} LIMIT ?",
        (*params, limit + 1),
    )
    page: list[Block] = []
    more = False
    try:
        # Row by row: a page stops early (with a cursor) before its reply outgrows the budget,
        # and rows it will not send are never read into memory.
        for row in cursor:
            if len(page) == limit:
                more = True
                break
            if budget is not None and not budget.add(_reply_bytes(row)):
                more = True
                break
            page.append(_block(row))
    finally:
        cursor.close()
    if backward:
        page.reverse()
        return page, (page[0].position if more and page else None)
    return page, (page[-1].position if more and page else None)


def _own_window(
    conn: DbConn,
    context_id: str,
    upto: int | None,
    count: int,
    budget: ReplyBudget | None,
) -> list[Block]:
    """The last `count` visible own blocks of a context with position <= upto (all when upto
    is None)."""
    if count <= 0:
        return []
    cursor = conn.execute(
        f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE context_id = ?1 AND position <= ?2 "
        "AND id NOT IN (SELECT block_id FROM retractions WHERE context_id = ?1) "
        "ORDER BY position DESC LIMIT ?3",
        (context_id, upto if upto is not None else 2**62, count),
    )
    blocks: list[Block] = []
    try:
        for row in cursor:
            if budget is not None:
                budget.take(_reply_bytes(row))
            blocks.append(_block(row))
    finally:
        cursor.close()
    blocks.reverse()
    return blocks


def history(
    conn: DbConn,
    context_id: str,
    *,
    limit: int | None = None,
    budget: ReplyBudget | None = None,
) -> list[HistoryBlock]:
    """What a model is given for a context: inherited blocks, then its own, oldest first.

    A sidebar inherits the last `inherit_last` blocks of its spawn parent's history as it stood
    at the spawn (the parent's own blocks up to `inherit_upto`, preceded by what the parent
    itself inherited). Each level reads at most the rows it contributes, so the cost follows the
    size of the answer, not of the conversation. With `limit`, only the last `limit` blocks.
    Retracted blocks are left out, and counts (`inherit_last`, `limit`) are of visible blocks:
    a sidebar that inherited 3 blocks, one of them retracted since, shows the 3 visible ones
    before it (the window is fixed by the spawn's `inherit_upto` position, not by a copy).
    A history is whole or refused: past the `budget`, LimitExceeded (ask for fewer with `limit`).
    """
    out: list[HistoryBlock] = []
    _history_into(conn, context_id, None, limit, out, budget, inherited=False)
    return out


def _history_into(
    conn: DbConn,
    context_id: str,
    upto: int | None,
    want: int | None,
    out: list[HistoryBlock],
    budget: ReplyBudget | None,
    *,
    inherited: bool,
) -> None:
    row = conn.execute(
        "SELECT inherit_from, inherit_last, inherit_upto FROM contexts WHERE id = ?",
        (context_id,),
    ).fetchone()
    if row is None:
        return
    inherit_from, inherit_last, inherit_upto = row
    last = own_block_count(conn, context_id) if upto is None else upto
    own_total = last - _retracted_upto(conn, context_id, last)
    take_own = own_total if want is None else min(want, own_total)
    still = None if want is None else want - take_own
    if inherit_from is not None and inherit_last > 0 and (still is None or still > 0):
        from_parent = inherit_last if still is None else min(inherit_last, still)
        _history_into(conn, inherit_from, inherit_upto, from_parent, out, budget, inherited=True)
    for b in _own_window(conn, context_id, upto, take_own, budget):
        out.append(HistoryBlock(block=b, source_context_id=context_id, inherited=inherited))


# --- search and stats --------------------------------------------------------------------------


# A snippet is at most this many characters: FTS5 cuts it to 12 tokens, but one token can be
# a whole block (a base64 blob), so the text is cut again, inside the token if need be.
SNIPPET_CHARS = 400
_ELLIPSIS = "…"
# What a hit costs in a reply besides its snippet: ids, role, seq, rank, JSON keys.
_HIT_OVERHEAD = 256

# Ranking is bounded: FTS5 must compute bm25 for every candidate before it can return the best
# few, and a very common word matches hundreds of thousands of blocks (seconds at 1M events).
SEARCH_RANKED_MATCHES = 2_000


def search(
    conn: DbConn,
    query: str,
    *,
    conversation_id: str | None = None,
    context_id: str | None = None,
    role: str | None = None,
    limit: int = 20,
    budget: ReplyBudget | None = None,
) -> list[SearchHit]:
    """FTS5 search, best first; a malformed query raises BadQuery, never an SQL error.

    On PostgreSQL (`conn.dialect`), state/search_pg.py answers instead: the same filters,
    bound, reply and order (lower rank is better), PostgreSQL's own text search.

    Each snippet is at most SNIPPET_CHARS characters (cut in SQL: SQLite returns no more); with
    a `budget`, fewer than `limit` hits when more would not fit the reply (`budget.full`).

    Semantics: the best (bm25) of the most recent `SEARCH_RANKED_MATCHES` (2,000) matches that
    pass the filters; equal ranks newest first. A query with fewer matches is ranked over all
    of them, as an unbounded search would; for a very common term, older matches beyond the
    most recent 2,000 are not ranked. bm25's statistics (row count, how many rows hold each
    term) are those of the whole index either way, so a hit's rank is the number an unbounded
    search would give it.

    Three statements (one read snapshot: `reads.py`), each reading only what it needs:
    1. rank: the matches newest first (FTS5 reads its doclists in rowid order, DESC natively,
       so this stops after 2,000 rows instead of scoring every match), bm25 only;
       sorted here by rank, the best `limit` kept;
    2. snippets for those rows only: one FTS5 scan over their rowid range; `snippet()` (which
       reads and tokenizes the block's text) runs only for the kept rows, behind CASE (the `+`
       keeps the IN list from becoming one FTS5 query per rowid);
    3. the kept blocks' ids, context and conversation, by seq.
    """
    if dialect_of(conn) == "postgresql":
        # Imported here: search_pg reads this module's bounds and collect_hits.
        from timelined.state import search_pg

        return search_pg.search(
            conn,
            query,
            conversation_id=conversation_id,
            context_id=context_id,
            role=role,
            limit=limit,
            budget=budget,
        )
    filters, params = search_filters(conversation_id, context_id, role)
    joins = (
        "JOIN blocks b ON b.seq = blocks_fts.rowid JOIN contexts c ON c.id = b.context_id "
        if filters
        else ""
    )
    where = "".join(f" AND {f}" for f in filters)
    # Retracted blocks keep their full-text rows (the index is only ever added to): they are
    # left out here, before ranking, so a page still holds `limit` hits when enough match.
    where += (
        " AND blocks_fts.rowid NOT IN "
        "(SELECT rb.seq FROM retractions r JOIN blocks rb ON rb.id = r.block_id)"
    )
    try:
        ranked = conn.execute(
            f"SELECT blocks_fts.rowid, bm25(blocks_fts) FROM blocks_fts {joins}"
            f"WHERE blocks_fts MATCH ?{where} ORDER BY blocks_fts.rowid DESC LIMIT ?",
            (query, *params, SEARCH_RANKED_MATCHES),
        ).fetchall()
        if not ranked:
            return []
        ranked.sort(key=_rank_of)  # stable: equal ranks stay newest first
        del ranked[limit:]
        seqs = [r[0] for r in ranked]
        marks = ",".join("?" * len(seqs))
        snippets = dict(
            conn.execute(
                f"SELECT rowid, CASE WHEN +rowid IN ({marks}) "
                "THEN substr(snippet(blocks_fts, 0, '[', ']', '…', 12), 1, ?) END "
                "FROM blocks_fts WHERE blocks_fts MATCH ? AND rowid BETWEEN ? AND ?",
                (*seqs, SNIPPET_CHARS + 1, query, min(seqs), max(seqs)),
            ).fetchall()
        )
        blocks = {
            r[0]: r
            for r in conn.execute(
                "SELECT b.seq, b.id, b.context_id, c.conversation_id, b.role FROM blocks b "
                f"JOIN contexts c ON c.id = b.context_id WHERE b.seq IN ({marks})",
                seqs,
            )
        }
    except sqlite3.OperationalError as exc:
        raise BadQuery(query, str(exc)) from exc
    return collect_hits(
        ((seq, rank, *blocks[seq][1:5], snippets[seq]) for seq, rank in ranked if seq in blocks),
        budget,
    )


def search_filters(
    conversation_id: str | None, context_id: str | None, role: str | None
) -> tuple[list[str], list[Any]]:
    """A search's filters as SQL clauses over `blocks b` and `contexts c`, and their values."""
    filters: list[str] = []
    params: list[Any] = []
    if conversation_id is not None:
        filters.append("c.conversation_id = ?")
        params.append(conversation_id)
    if context_id is not None:
        filters.append("b.context_id = ?")
        params.append(context_id)
    if role is not None:
        filters.append("b.role = ?")
        params.append(role)
    return filters, params


# A ranked match, best first: (seq, rank, block id, context id, conversation id, role, snippet
# as the database made it).
RankedRow = tuple[int, float, str, str, str, str, str]


def collect_hits(rows: Iterable[RankedRow], budget: ReplyBudget | None) -> list[SearchHit]:
    """The hits of ranked matches: each snippet cut to SNIPPET_CHARS, as many as the `budget`
    takes (both backends' searches end here: state/search_pg.py)."""
    hits: list[SearchHit] = []
    for seq, rank, block_id, context_id, conversation_id, role, raw in rows:
        snippet = _cut(raw)
        if budget is not None and not budget.add(json_size(snippet) + _HIT_OVERHEAD):
            break
        hits.append(
            SearchHit(
                block_id=block_id,
                context_id=context_id,
                conversation_id=conversation_id,
                role=role,
                seq=seq,
                snippet=snippet,
                rank=float(rank),
            )
        )
    return hits


def _cut(snippet: str) -> str:
    if len(snippet) <= SNIPPET_CHARS:
        return snippet
    return snippet[: SNIPPET_CHARS - 1] + _ELLIPSIS


def _rank_of(row: tuple[int, float]) -> float:
    return row[1]


def conversation_stats(conn: DbConn, conversation_id: str) -> ConversationStats:
    per_role: dict[str, int] = {}
    total = tin = tout = 0
    taken = 0.0
    for role, n, i, o, t in conn.execute(
        # CAST: PostgreSQL sums BIGINTs into NUMERIC (a Decimal); SQLite reads it as INTEGER.
        "SELECT b.role, count(*), CAST(coalesce(sum(b.tokens_input), 0) AS BIGINT), "
        "CAST(coalesce(sum(b.tokens_output), 0) AS BIGINT), coalesce(sum(b.time_taken), 0.0) "
        "FROM blocks b JOIN contexts c ON c.id = b.context_id WHERE c.conversation_id = ? "
        "GROUP BY b.role ORDER BY b.role",
        (conversation_id,),
    ):
        per_role[role] = n
        total += n
        tin += i
        tout += o
        taken += t
    per_status = dict(
        conn.execute(
            "SELECT status, count(*) FROM contexts WHERE conversation_id = ? GROUP BY status "
            "ORDER BY status",
            (conversation_id,),
        ).fetchall()
    )
    return ConversationStats(
        conversation_id=conversation_id,
        blocks=total,
        blocks_per_role=per_role,
        tokens_input=tin,
        tokens_output=tout,
        # To the microsecond: SQLite and PostgreSQL sum floats in different orders and ways
        # (SQLite compensates rounding errors), so the last bits of the sum differ between
        # the backends; a microsecond is far below what a block's time_taken measures.
        time_taken=round(taken, 6),
        contexts_per_status=per_status,
    )


# --- focus and startup -------------------------------------------------------------------------


def focus(conn: DbConn) -> Focus:
    row = conn.execute("SELECT context_id, conversation_id FROM focus WHERE id = 1").fetchone()
    return Focus(context_id=row[0], conversation_id=row[1])


# A conversation's last change: the larger of two seqs, as CASE (SQLite's two-argument max()
# is GREATEST() on PostgreSQL; CASE reads the same on both).
_TOUCHED = "CASE WHEN updated_seq > created_seq THEN updated_seq ELSE created_seq END"


def startup_state(conn: DbConn) -> StartupState:
    if conn.execute("SELECT 1 FROM conversations LIMIT 1").fetchone() is None:
        return StartupState(has_data=False)
    f = focus(conn)
    focused = get_context(conn, f.context_id) if f.context_id else None
    focused_conv = get_conversation(conn, f.conversation_id) if f.conversation_id else None
    # The last active conversation: the one touched by the newest block or conversation event,
    # ignoring archived ones (a UI reopens what the user was working in).
    row = conn.execute(
        "SELECT conversation_id, seq FROM ("
        " SELECT c.conversation_id AS conversation_id, b.seq AS seq FROM blocks b"
        "  JOIN contexts c ON c.id = b.context_id"
        "  JOIN conversations v ON v.id = c.conversation_id AND v.status != 'archived'"
        "  ORDER BY b.seq DESC LIMIT 1)"
        " UNION ALL SELECT * FROM ("
        f" SELECT id, {_TOUCHED} FROM conversations WHERE status != 'archived'"
        f"  ORDER BY {_TOUCHED} DESC LIMIT 1)"
        " ORDER BY 2 DESC LIMIT 1"
    ).fetchone()
    last = get_conversation(conn, row[0]) if row else None
    return StartupState(
        has_data=True,
        focused_context=focused,
        focused_conversation=focused_conv,
        last_active_conversation=last,
    )
