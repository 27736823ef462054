"""What the state answers: the query replies, shared by the state, the daemon and the client."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from timelined.events import SubBlock

ContextStatus = Literal["active", "paused", "merged", "archived"]
ConversationStatus = Literal["active", "archived"]


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    root_context_id: str
    status: ConversationStatus
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    archive_reason: str | None = None
    imported_from: dict[str, Any] | None = None


class CrossRef(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    from_id: str
    to_id: str
    kind: str
    note: str
    created_at: str


class Context(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    conversation_id: str
    parent_id: str | None
    status: ContextStatus
    reason: str
    created_at: str
    updated_at: str
    inherit_from: str | None = None
    inherit_last: int = 0
    block_count: int = 0
    archive_reason: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    crossrefs: list[CrossRef] = msgspec.field(default_factory=list)
    # True when the context's cross-references did not fit the reply (they grew under larger
    # limits than this daemon's): `crossrefs` is then empty, and ListCrossRefs pages them.
    crossrefs_omitted: bool = False


class Block(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    context_id: str
    role: str
    content: str
    timestamp: str
    seq: int
    position: int
    time_taken: float | None = None
    tokens_input: int | None = None
    tokens_output: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    sub_blocks: list[SubBlock] = msgspec.field(default_factory=list)


class HistoryBlock(msgspec.Struct, frozen=True, kw_only=True):
    """A block as a model is given it: `source_context_id` says which context it came from."""

    block: Block
    source_context_id: str
    inherited: bool


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    block_id: str
    context_id: str
    conversation_id: str
    role: str
    seq: int
    snippet: str
    rank: float


class Focus(msgspec.Struct, frozen=True, kw_only=True):
    context_id: str | None
    conversation_id: str | None


class StartupState(msgspec.Struct, frozen=True, kw_only=True):
    """What a chat UI needs on start."""

    has_data: bool
    focused_context: Context | None = None
    focused_conversation: Conversation | None = None
    last_active_conversation: Conversation | None = None


class ConversationStats(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    blocks: int
    blocks_per_role: dict[str, int]
    tokens_input: int
    tokens_output: int
    time_taken: float
    contexts_per_status: dict[str, int]
