"""The parameters of Timeline's reading methods and the replies of all its methods.

(The writing methods take the commands of `timelined.commands` as their parameters.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

from timelined.api.exchange import ExportDocument, ImportMode
from timelined.api.model import (
    Block,
    Context,
    Conversation,
    ConversationStats,
    CrossRef,
    HistoryBlock,
    SearchHit,
    StartupState,
)
from timelined.api.scalars import (
    DEFAULT_LIMIT,
    Cursor,
    HistoryLimit,
    Id,
    Limit,
    Params,
    Query,
    Role,
    SearchLimit,
    Timestamp,
)
from timelined.replies import REPLY_ENVELOPE

# --- parameters --------------------------------------------------------------------------------


class ByIdParams(Params, frozen=True):
    id: Id


class ListConversationsParams(Params, frozen=True):
    include_archived: bool = False
    limit: Limit = DEFAULT_LIMIT
    after: Cursor | None = None
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None


class GetTreeParams(Params, frozen=True):
    conversation_id: Id
    after: Cursor | None = None


class ListCrossRefsParams(Params, frozen=True):
    context_id: Id
    after: Cursor | None = None
    limit: Limit = DEFAULT_LIMIT


class ListBlocksParams(Params, frozen=True):
    context_id: Id
    after: Cursor | None = None
    before: Cursor | None = None
    limit: Limit = DEFAULT_LIMIT
    roles: list[Role] | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    include_retracted: bool = False


class GetHistoryParams(Params, frozen=True):
    context_id: Id
    limit: HistoryLimit | None = None


class SearchBlocksParams(Params, frozen=True):
    query: Query
    conversation_id: Id | None = None
    context_id: Id | None = None
    role: Role | None = None
    limit: SearchLimit = 20


class WatchParams(Params, frozen=True):
    conversation_id: Id | None = None
    after_seq: Cursor | None = None


class ImportConversationParams(Params, frozen=True):
    document: ExportDocument
    mode: ImportMode = "new"


# --- replies -----------------------------------------------------------------------------------


class AppendResult(msgspec.Struct, frozen=True):
    block: Block
    seq: int


class AppendedBlock(msgspec.Struct, frozen=True):
    """One block of an AppendBlocks call as stored: its id (the call's, or the one the daemon
    gave it), its seq in the log and its position in the context. `existed`: it was stored
    before this call (a retry); this call wrote nothing for it."""

    id: str
    seq: int
    position: int
    existed: bool


class AppendBlocksReply(msgspec.Struct, frozen=True):
    """The call's blocks in the call's order, without their content (the caller sent it;
    GetBlock and ListBlocks give the stored form). Never more than
    `append_blocks_reply_bound` of the call's ids: a call whose reply could pass
    limits.max_message_bytes is refused before anything is written."""

    blocks: list[AppendedBlock]


# The widest an AppendedBlock is on the wire besides its id's JSON string: the field names, a
# separating comma, and seq and position at their widest (a signed 64-bit integer: 20 chars).
APPENDED_BLOCK_BYTES = len('{"id":,"seq":,"position":,"existed":false},') + 2 * 20


def append_blocks_reply_bound(id_sizes: Iterable[int]) -> int:
    """The most bytes an AppendBlocks reply takes, its frame's envelope included, given the JSON
    sizes of the ids of the call's blocks (`timelined.replies.json_size`)."""
    return REPLY_ENVELOPE + sum(APPENDED_BLOCK_BYTES + size for size in id_sizes)


class ConversationReply(msgspec.Struct, frozen=True):
    conversation: Conversation


class ConversationsReply(msgspec.Struct, frozen=True):
    """`next`: more remain; pass it back as `after`. A page holds fewer than `limit` when more
    would not fit one reply (limits.max_message_bytes: metadata may be large)."""

    conversations: list[Conversation]
    next: int | None = None


class ContextReply(msgspec.Struct, frozen=True):
    context: Context


class ContextsReply(msgspec.Struct, frozen=True):
    """`next`: the tree did not fit one reply (limits.max_message_bytes); pass it back as
    `after` for the contexts created after these."""

    contexts: list[Context]
    next: int | None = None


class StartupStateReply(msgspec.Struct, frozen=True):
    state: StartupState


class BlockReply(msgspec.Struct, frozen=True):
    block: Block


class BlocksReply(msgspec.Struct, frozen=True):
    blocks: list[Block]
    next: int | None = None


class HistoryReply(msgspec.Struct, frozen=True):
    blocks: list[HistoryBlock]


class SearchReply(msgspec.Struct, frozen=True):
    """`truncated`: fewer hits than `limit` were sent because more would not fit one reply
    (`limits.max_message_bytes`); ask for fewer, or narrow the query. `indexed_seq`: every
    block with a seq up to this one is searchable (the index is written just after the
    state's commits); the search waited, at most a second, for every block acknowledged
    before the call to be indexed."""

    hits: list[SearchHit]
    truncated: bool = False
    indexed_seq: int | None = None


class StatsReply(msgspec.Struct, frozen=True):
    stats: ConversationStats


class CrossRefReply(msgspec.Struct, frozen=True):
    crossref: CrossRef


class CrossRefsReply(msgspec.Struct, frozen=True):
    """`next`: more remain (past `limit`, or past what one reply holds); pass it back as
    `after`."""

    crossrefs: list[CrossRef]
    next: int | None = None


class WatchReply(msgspec.Struct, frozen=True):
    """`events`: log lines byte for byte, in seq order (as ReadLog's). `live`: the catch-up of
    events past `after_seq` is over; these and all later events committed after the call."""

    events: list[msgspec.Raw]
    live: bool


class LogEvent(msgspec.Struct, frozen=True):
    """One audit-log event as the log holds it: what the client library's `watch` yields.

    (Not on the wire as a type: `actor` is an object or the string "daemon", which Varlink
    cannot declare; Watch sends the log's lines as `object`s.)
    """

    seq: int
    ts: str
    type: str
    actor: dict[str, Any] | str
    data: dict[str, Any]
    prev: str
    hash: str
