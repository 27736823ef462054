"""The event vocabulary: one typed class per state change, as recorded in the audit log.

A `Record` is one line of the log: `seq`, `ts`, `type`, `actor`, `data`, `prev`, `hash`. The
`data` member is one of the event classes below, chosen by `type`. Event classes are frozen
msgspec Structs: decoding validates every field, so a line whose data does not fit its type is
refused as damage rather than half-applied.

Compatibility: `SCHEMA_VERSION` is stored in the state database and the clean-shutdown marker.
Within one schema version a type's data may only gain optional fields; a change that old readers
could misread takes a new type name. (`block.retracted` is such a new type, added within
version 1: a log holding one is refused, as damage, by a timelined that predates it.)
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

SCHEMA_VERSION = 1

Metadata = dict[str, Any]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Role = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Actor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who caused an event: the peer credentials of the client's socket."""

    uid: int
    gid: int
    pid: int


DAEMON: Literal["daemon"] = "daemon"
ActorLike = Actor | Literal["daemon"]


class ImportSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where an imported conversation came from: the exporting daemon's id, time and head."""

    conversation_id: str
    exported_at: str
    head_hash: str
    mode: str = "new"


class _Event(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    """Base of every event. Members equal to their default are left out of `data`.

    `original_hash`: on an event written by an import, the hash of the event it reproduces in
    the exporting daemon's log (docs/log-format.md, "Imported events").
    """

    type_name: ClassVar[str]
    original_hash: str | None = None


# --- conversations -----------------------------------------------------------------------------


class ConversationCreated(_Event, frozen=True):
    """A conversation and its root context (status active, focused)."""

    type_name: ClassVar[str] = "conversation.created"
    conversation_id: Id
    name: str
    root_context_id: Id
    metadata: Metadata = msgspec.field(default_factory=dict)
    imported_from: ImportSource | None = None


class ConversationUpdated(_Event, frozen=True):
    type_name: ClassVar[str] = "conversation.updated"
    conversation_id: Id
    name: str | None = None
    metadata: Metadata | None = None  # replaces the whole metadata object when present


class ConversationArchived(_Event, frozen=True):
    type_name: ClassVar[str] = "conversation.archived"
    conversation_id: Id
    reason: str = ""


# --- contexts ----------------------------------------------------------------------------------


class ContextSpawned(_Event, frozen=True):
    """A sidebar: child active and focused, parent paused.

    The child inherits the last `inherit_last` blocks of the parent's history as it stood when
    the parent had `parent_blocks` blocks of its own: a fixed reference, never a copy.
    """

    type_name: ClassVar[str] = "context.spawned"
    context_id: Id
    conversation_id: Id
    parent_id: Id
    reason: str
    inherit_last: int = 0
    parent_blocks: int = 0


class ContextPaused(_Event, frozen=True):
    type_name: ClassVar[str] = "context.paused"
    context_id: Id


class ContextResumed(_Event, frozen=True):
    """Paused → active; focus moves to it."""

    type_name: ClassVar[str] = "context.resumed"
    context_id: Id


class ContextMerged(_Event, frozen=True):
    """The sidebar becomes merged; a system block holding the summary is appended to the parent,
    which becomes active and takes focus."""

    type_name: ClassVar[str] = "context.merged"
    context_id: Id
    parent_id: Id
    summary: str
    block_id: Id  # the merge block appended to the parent
    block_count: int  # how many blocks the merged sidebar held


class ContextArchived(_Event, frozen=True):
    """Any status but archived → archived; focus moves to the parent (or none) if it was here."""

    type_name: ClassVar[str] = "context.archived"
    context_id: Id
    reason: str = ""


class ContextRestored(_Event, frozen=True):
    """Archived → paused."""

    type_name: ClassVar[str] = "context.restored"
    context_id: Id


class ContextReparented(_Event, frozen=True):
    type_name: ClassVar[str] = "context.reparented"
    context_id: Id
    old_parent_id: Id
    new_parent_id: Id


class ContextFocused(_Event, frozen=True):
    type_name: ClassVar[str] = "context.focused"
    context_id: Id


class ContextTagged(_Event, frozen=True):
    """Replaces the context's tag set."""

    type_name: ClassVar[str] = "context.tagged"
    context_id: Id
    tags: list[str]


class CrossRefAdded(_Event, frozen=True):
    type_name: ClassVar[str] = "crossref.added"
    ref_id: Id
    from_id: Id
    to_id: Id
    kind: str
    note: str = ""


class CrossRefRevoked(_Event, frozen=True):
    type_name: ClassVar[str] = "crossref.revoked"
    ref_id: Id


# --- blocks ------------------------------------------------------------------------------------


class SubBlock(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    content: str
    timestamp: str | None = None
    model: str | None = None
    time_taken: float | None = None
    tokens_input: int | None = None
    tokens_output: int | None = None
    metadata: Metadata | None = None


class BlockData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A block as written; immutable once in the log."""

    id: Id
    context_id: Id
    role: Role
    content: str
    timestamp: str
    time_taken: float | None = None
    tokens_input: int | None = None
    tokens_output: int | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)
    sub_blocks: list[SubBlock] = msgspec.field(default_factory=list)


class BlockAppended(_Event, frozen=True):
    type_name: ClassVar[str] = "block.appended"
    block: BlockData


class BlockRetracted(_Event, frozen=True):
    """A block leaves its context's history, ListBlocks and search; it stays in the log, in
    GetBlock and in exports (the log is append-only: a retraction hides, never deletes).
    `context_id` is the block's own context (so exports and watchers scope it like a block)."""

    type_name: ClassVar[str] = "block.retracted"
    block_id: Id
    context_id: Id
    reason: str = ""


Event = (
    ConversationCreated
    | ConversationUpdated
    | ConversationArchived
    | ContextSpawned
    | ContextPaused
    | ContextResumed
    | ContextMerged
    | ContextArchived
    | ContextRestored
    | ContextReparented
    | ContextFocused
    | ContextTagged
    | CrossRefAdded
    | CrossRefRevoked
    | BlockAppended
    | BlockRetracted
)

EVENT_CLASSES: tuple[type[_Event], ...] = (
    ConversationCreated,
    ConversationUpdated,
    ConversationArchived,
    ContextSpawned,
    ContextPaused,
    ContextResumed,
    ContextMerged,
    ContextArchived,
    ContextRestored,
    ContextReparented,
    ContextFocused,
    ContextTagged,
    CrossRefAdded,
    CrossRefRevoked,
    BlockAppended,
    BlockRetracted,
)

EVENT_TYPES: dict[str, type[_Event]] = {cls.type_name: cls for cls in EVENT_CLASSES}


class Record(msgspec.Struct, frozen=True):
    """One event as recorded in the log (one line): what `apply` and the readers consume."""

    seq: int
    ts: str  # UTC, microseconds, Z: 2026-11-22T03:38:00.123456Z
    actor: ActorLike
    event: Event
    prev: str
    hash: str

    @property
    def type(self) -> str:
        return self.event.type_name


_encoder = msgspec.json.Encoder(order="deterministic")
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()
}


def encode_data(event: Event) -> bytes:
    """The `data` member's bytes: fields in class order, dict keys sorted, no whitespace."""
    return _encoder.encode(event)


def decode_data(type_name: str, data: bytes | memoryview) -> Event:
    """Decode and validate `data` for `type`; raises KeyError (unknown type) or
    msgspec.ValidationError / msgspec.DecodeError (data does not fit)."""
    result: Event = _decoders[type_name].decode(data)
    return result
