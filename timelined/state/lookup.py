"""Look it up or raise the named NotFound: the writer's rules and the daemon's reads alike.

Plain functions over a connection (`DbConn`), as `queries.py`: the rules call them on the writer's
connection inside the command's savepoint; the daemon runs them (and the checked reads below)
on a read-only connection through `Engine.read`, in one snapshot, so the check and the answer
agree.
"""

from __future__ import annotations

from timelined.api import model as m
from timelined.errors import BlockNotFound, ContextNotFound, ConversationNotFound, CrossRefNotFound
from timelined.replies import ReplyBudget
from timelined.state import queries as q
from timelined.state.dbapi import DbConn


def conversation_or_raise(conn: DbConn, id: str) -> m.Conversation:
    found = q.get_conversation(conn, id)
    if found is None:
        raise ConversationNotFound(id)
    return found


def context_or_raise(
    conn: DbConn, id: str, *, crossrefs: bool = True, reply_bytes: int | None = None
) -> m.Context:
    found = q.get_context(conn, id, crossrefs=crossrefs, reply_bytes=reply_bytes)
    if found is None:
        raise ContextNotFound(id)
    return found


def block_or_raise(conn: DbConn, id: str) -> m.Block:
    found = q.get_block(conn, id)
    if found is None:
        raise BlockNotFound(id)
    return found


def crossref_or_raise(conn: DbConn, id: str) -> m.CrossRef:
    found = q.get_crossref(conn, id)
    if found is None:
        raise CrossRefNotFound(id)
    return found


def require_conversation(conn: DbConn, id: str) -> None:
    """ConversationNotFound unless it exists (one indexed probe, nothing decoded)."""
    if not q.conversation_exists(conn, id):
        raise ConversationNotFound(id)


def require_context(conn: DbConn, id: str) -> None:
    """ContextNotFound unless it exists (one indexed probe, nothing decoded)."""
    if not q.context_exists(conn, id):
        raise ContextNotFound(id)


# --- checked reads: the parent's NotFound, else the query's answer, in one snapshot -------------


def tree_or_raise(
    conn: DbConn,
    conversation_id: str,
    *,
    after: int | None = None,
    reply_bytes: int | None = None,
) -> tuple[list[m.Context], int | None]:
    """A page of the tree (all of it without `reply_bytes`) and the cursor of the rest; a
    context whose cross-references do not fit a page alone comes without them."""
    require_conversation(conn, conversation_id)
    budget = ReplyBudget(reply_bytes) if reply_bytes is not None else None
    return q.tree_page(conn, conversation_id, after=after, budget=budget, omit_crossrefs=True)


def crossrefs_or_raise(
    conn: DbConn,
    context_id: str,
    *,
    after: int | None = None,
    limit: int | None = None,
    reply_bytes: int,
) -> tuple[list[m.CrossRef], int | None]:
    """A page of the context's live cross-references and the cursor of the rest."""
    require_context(conn, context_id)
    return q.crossrefs_page(
        conn, context_id, after=after, limit=limit, budget=ReplyBudget(reply_bytes)
    )


def blocks_or_raise(
    conn: DbConn,
    context_id: str,
    *,
    limit: int,
    after: int | None,
    before: int | None,
    roles: list[str] | None,
    since: str | None,
    until: str | None,
    reply_bytes: int,
    include_retracted: bool = False,
) -> tuple[list[m.Block], int | None]:
    require_context(conn, context_id)
    return q.list_blocks(
        conn,
        context_id,
        limit=limit,
        after=after,
        before=before,
        roles=roles,
        since=since,
        until=until,
        budget=ReplyBudget(reply_bytes),
        include_retracted=include_retracted,
    )


def history_or_raise(
    conn: DbConn, context_id: str, *, limit: int | None, reply_bytes: int
) -> list[m.HistoryBlock]:
    require_context(conn, context_id)
    return q.history(conn, context_id, limit=limit, budget=ReplyBudget(reply_bytes))


def search_or_raise(
    conn: DbConn,
    query: str,
    *,
    conversation_id: str | None,
    context_id: str | None,
    role: str | None,
    limit: int,
    budget: ReplyBudget | None = None,
) -> list[m.SearchHit]:
    if conversation_id is not None:
        require_conversation(conn, conversation_id)
    if context_id is not None:
        require_context(conn, context_id)
    return q.search(
        conn,
        query,
        conversation_id=conversation_id,
        context_id=context_id,
        role=role,
        limit=limit,
        budget=budget,
    )


def stats_or_raise(conn: DbConn, conversation_id: str) -> m.ConversationStats:
    require_conversation(conn, conversation_id)
    return q.conversation_stats(conn, conversation_id)
