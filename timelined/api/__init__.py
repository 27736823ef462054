"""The public contract: the interfaces `io.timelined.Timeline` and `io.timelined.Admin`.

Adding a method: declare it below, add its handler to `methods.py`, classify it in `auth.py`
(reading or writing), give the client a typed method and timelinectl a verb, and regenerate the
`.varlink` files; tests/daemon/test_contract.py fails until each of these is done. Streaming
methods (Watch, ExportConversation) are async generators yielding replies (`Final` for the last).

One definition. The parameter Structs of the write methods are the engine's commands
(`timelined.commands`); the replies carry the state's model Structs (`timelined.state.model`).
The same Structs validate a call on the socket, type the client library's replies, and render
the `.varlink` files in `timelined/api/interfaces/` (`python -m timelined.varlink.gen`;
a test fails when the files drift from this module).

Method and parameter names are the contract of issue 3 and DESIGN.md: clients are written
against them, so a rename is a breaking change. Optional parameters may be added freely.

Errors travel as `io.timelined.<Name>` (see `timelined.errors`), whichever interface the method
belongs to; each interface declares the errors its methods can send, with their parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from timelined import commands as cmd
from timelined import errors as err
from timelined.exchange import ExportDocument, ExportPart, ImportMode
from timelined.recovery.report import Report, ReportInfo
from timelined.state.model import (
    Block,
    Context,
    Conversation,
    ConversationStats,
    CrossRef,
    HistoryBlock,
    SearchHit,
    StartupState,
)
from timelined.varlink import ErrorDef, Interface, Method
from timelined.writer.rules import AppendResult

__all__ = [
    "ADMIN",
    "INTERFACES",
    "METHODS",
    "TIMELINE",
    "FeatureUnavailable",
    "LogEvent",
]

TIMELINE_NAME = "io.timelined.Timeline"
ADMIN_NAME = "io.timelined.Admin"

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Id = cmd.Id
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="1..1000; default 100")]
SearchLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="1..1000; default 20")]
HistoryLimit = Annotated[
    int, msgspec.Meta(ge=1, le=1_000_000, description="only the last N blocks; default all")
]
Cursor = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # bound to SQLite INTEGER
Timestamp = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="ISO 8601; naive times are UTC")
]
Query = Annotated[str, msgspec.Meta(max_length=4096, description="an FTS5 query")]


class FeatureUnavailable(err.TimelinedError):
    """A method whose part of the daemon is not running (e.g. no verifier in this build)."""

    name = "FeatureUnavailable"

    def __init__(self, feature: str, reason: str) -> None:
        super().__init__(f"{feature} is not available: {reason}", feature=feature, reason=reason)


class _Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


# --- Timeline: parameters of the reading methods -----------------------------------------------
# (the writing methods take the commands of timelined.commands as their parameters)


class ByIdParams(_Params, frozen=True):
    id: Id


class ListConversationsParams(_Params, frozen=True):
    include_archived: bool = False
    limit: Limit = DEFAULT_LIMIT
    after: Cursor | None = None


class GetTreeParams(_Params, frozen=True):
    conversation_id: Id


class EmptyParams(_Params, frozen=True):
    pass


class ListBlocksParams(_Params, frozen=True):
    context_id: Id
    after: Cursor | None = None
    before: Cursor | None = None
    limit: Limit = DEFAULT_LIMIT
    roles: list[cmd.Role] | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None


class GetHistoryParams(_Params, frozen=True):
    context_id: Id
    limit: HistoryLimit | None = None


class SearchBlocksParams(_Params, frozen=True):
    query: Query
    conversation_id: Id | None = None
    context_id: Id | None = None
    role: cmd.Role | None = None
    limit: SearchLimit = 20


class WatchParams(_Params, frozen=True):
    conversation_id: Id | None = None
    after_seq: Cursor | None = None


class ImportConversationParams(_Params, frozen=True):
    document: ExportDocument
    mode: ImportMode = "new"


# --- Timeline: replies -------------------------------------------------------------------------


class ConversationReply(msgspec.Struct, frozen=True):
    conversation: Conversation


class ConversationsReply(msgspec.Struct, frozen=True):
    conversations: list[Conversation]
    next: int | None = None


class ContextReply(msgspec.Struct, frozen=True):
    context: Context


class ContextsReply(msgspec.Struct, frozen=True):
    contexts: list[Context]


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
    hits: list[SearchHit]


class StatsReply(msgspec.Struct, frozen=True):
    stats: ConversationStats


class CrossRefReply(msgspec.Struct, frozen=True):
    crossref: CrossRef


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


# --- Admin: parameters and replies -------------------------------------------------------------


class ReadLogParams(_Params, frozen=True):
    after_seq: Cursor = 0
    limit: Limit = DEFAULT_LIMIT


class GetRecoveryReportParams(_Params, frozen=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


ReportKind = Literal["boot", "recovery", "repair", "verify"]


class ListReportsParams(_Params, frozen=True):
    limit: Limit = DEFAULT_LIMIT
    kind: ReportKind | None = None


class VerifyParams(_Params, frozen=True):
    wait: bool = False


class BootStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The boot that started this daemon."""

    verdict: str
    report_id: str
    recovery_report: str | None = None
    started_at: str
    fast_path: bool
    events_rolled_forward: int


class ConnectionStats(msgspec.Struct, frozen=True, kw_only=True):
    open: int
    total: int
    rejected: int
    streams: int
    calls: int
    errors: int


class WriterStats(msgspec.Struct, frozen=True, kw_only=True):
    commands: int
    refused: int
    events: int
    batches: int
    queue_depth: int


class Status(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    pid: int
    started_at: str
    uptime_s: float
    state_dir: str
    socket_path: str
    last_seq: int
    head_hash: str
    boot: BootStatus
    verify: dict[str, Any]
    connections: ConnectionStats
    writer: WriterStats
    read_only: str | None = None
    fatal: str | None = None


class StatusReply(msgspec.Struct, frozen=True):
    status: Status


class ReadLogReply(msgspec.Struct, frozen=True):
    """`events` are the log's lines byte for byte (each a JSON object with its `hash`)."""

    events: list[msgspec.Raw]
    next: int | None = None


class RecoveryReportReply(msgspec.Struct, frozen=True):
    report: Report | None = None


class ReportsReply(msgspec.Struct, frozen=True):
    reports: list[ReportInfo]


class VerifyReply(msgspec.Struct, frozen=True):
    result: dict[str, Any] | None = None
    status: dict[str, Any] | None = None


class VerifyReportReply(msgspec.Struct, frozen=True):
    report: dict[str, Any] | None = None


class RepairReply(msgspec.Struct, frozen=True):
    result: dict[str, Any] | None = None


class ReloadReply(msgspec.Struct, frozen=True):
    changed: list[str]
    restart_required: list[str] = msgspec.field(default_factory=list)


class EmptyReply(msgspec.Struct, frozen=True):
    pass


class MetricsReply(msgspec.Struct, frozen=True):
    """`text`: the Prometheus text exposition format, version 0.0.4."""

    text: str


# --- errors: the parameters of every named error -----------------------------------------------


class _E(msgspec.Struct, frozen=True):
    message: str


class IdError(_E, frozen=True):
    id: str


class InvalidTransitionError(_E, frozen=True):
    id: str
    status: str
    action: str
    reason: str | None


class CycleErrorParams(_E, frozen=True):
    id: str
    new_parent_id: str


class CrossConversationMoveError(_E, frozen=True):
    id: str
    conversation_id: str
    new_parent_id: str
    target_conversation_id: str


class BlockIdConflictError(_E, frozen=True):
    id: str
    context_id: str


class LimitExceededError(_E, frozen=True):
    limit: str
    size: int
    maximum: int


class InvalidArgumentError(_E, frozen=True):
    parameter: str
    reason: str


class BadQueryError(_E, frozen=True):
    query: str
    reason: str


class ImportRejectedError(_E, frozen=True):
    reason: str
    seq: int | None


class PermissionDeniedError(_E, frozen=True):
    uid: int
    gid: int
    method: str
    reason: str


class LogDamagedError(_E, frozen=True):
    seq: int | None
    reason: str
    segment: str | None


class PathError(_E, frozen=True):
    path: str


class IoError(_E, frozen=True):
    path: str
    errno: int


class FatalIoError(IoError, frozen=True):
    operation: str


class MessageOnly(_E, frozen=True):
    pass


class StateLockedError(_E, frozen=True):
    path: str
    pid: int | None


class SlowConsumerError(_E, frozen=True):
    buffered: int


class DaemonUnavailableError(_E, frozen=True):
    socket_path: str
    reason: str


class BootFailedError(_E, frozen=True):
    reason: str
    report: str | None


class ReasonError(_E, frozen=True):
    reason: str


class BackupFailedError(_E, frozen=True):
    side: str
    path: str


class ConfigErrorParams(_E, frozen=True):
    key: str
    problem: str
    path: str | None


class InternalErrorParams(_E, frozen=True):
    detail: str | None = None
    exception: str | None = None


class FeatureUnavailableError(_E, frozen=True):
    feature: str
    reason: str


def _error(name: str, params: type[msgspec.Struct], doc: str) -> ErrorDef:
    return ErrorDef(name, params, doc)


_NOT_FOUND = "No {} with this id."
E = {
    "ConversationNotFound": _error(
        "ConversationNotFound", IdError, _NOT_FOUND.format("conversation")
    ),
    "ContextNotFound": _error("ContextNotFound", IdError, _NOT_FOUND.format("context")),
    "BlockNotFound": _error("BlockNotFound", IdError, _NOT_FOUND.format("block")),
    "CrossRefNotFound": _error(
        "CrossRefNotFound", IdError, "No live (unrevoked) cross-reference with this id."
    ),
    "ReportNotFound": _error("ReportNotFound", IdError, "No report with this id."),
    "InvalidTransition": _error(
        "InvalidTransition",
        InvalidTransitionError,
        "The current status of the context (or conversation) does not allow the action.",
    ),
    "CycleError": _error(
        "CycleError", CycleErrorParams, "A context cannot move under itself or its descendants."
    ),
    "CrossConversationMove": _error(
        "CrossConversationMove", CrossConversationMoveError, "Contexts do not cross conversations."
    ),
    "BlockIdConflict": _error(
        "BlockIdConflict",
        BlockIdConflictError,
        "A block with this id exists with other content (the same content is a safe retry).",
    ),
    "LimitExceeded": _error(
        "LimitExceeded",
        LimitExceededError,
        "A configured limit (max_block_bytes, max_message_bytes, max_connections) was exceeded.",
    ),
    "InvalidArgument": _error(
        "InvalidArgument",
        InvalidArgumentError,
        "A parameter of the right type with a value that is refused.",
    ),
    "BadQuery": _error("BadQuery", BadQueryError, "A malformed FTS5 search query."),
    "ImportRejected": _error(
        "ImportRejected", ImportRejectedError, "An import document was refused."
    ),
    "SlowConsumer": _error(
        "SlowConsumer", SlowConsumerError, "A watcher fell too far behind and was disconnected."
    ),
    "PermissionDenied": _error(
        "PermissionDenied",
        PermissionDeniedError,
        "The caller's uid/gid may not call this method; the connection is closed after it.",
    ),
    "LogDamaged": _error(
        "LogDamaged",
        LogDamagedError,
        "The audit log is damaged before its tail: reads are served, writes refused.",
    ),
    "DiskFull": _error(
        "DiskFull", PathError, "No space left; the write was refused and nothing of it kept."
    ),
    "StorageError": _error("StorageError", IoError, "An I/O error; the write was refused."),
    "FatalStorageError": _error(
        "FatalStorageError",
        FatalIoError,
        "fsync (or the state's commit) failed: the daemon stops and recovery replays the log at"
        " its next start.",
    ),
    "ShuttingDown": _error(
        "ShuttingDown", MessageOnly, "The daemon is stopping; retry after it restarts."
    ),
    "ProtocolError": _error(
        "ProtocolError",
        ReasonError,
        "A frame that is not a Varlink call; the connection is closed after it.",
    ),
    "InternalError": _error(
        "InternalError",
        InternalErrorParams,
        "A bug: the call failed unexpectedly and left no trace; the daemon's log has details.",
    ),
    "ConfigError": _error(
        "ConfigError",
        ConfigErrorParams,
        "The configuration file was refused; `key` names the offending key.",
    ),
    "FeatureUnavailable": _error(
        "FeatureUnavailable",
        FeatureUnavailableError,
        "The part of the daemon this method needs is not running.",
    ),
    "StateLocked": _error(
        "StateLocked",
        StateLockedError,
        "Never sent on the socket: a second daemon refused to start on a locked state.",
    ),
    "BootFailed": _error(
        "BootFailed",
        BootFailedError,
        "Never sent on the socket: the boot could not complete and the daemon did not start.",
    ),
    "DaemonUnavailable": _error(
        "DaemonUnavailable",
        DaemonUnavailableError,
        "Never sent on the socket: the client library's error when the daemon is unreachable.",
    ),
    "BackupFailed": _error(
        "BackupFailed",
        BackupFailedError,
        "Never sent on the socket: `timelined backup` made no backup; `side` is source, "
        "destination or copy.",
    ),
}

_COMMON = [
    "PermissionDenied",
    "InvalidArgument",
    "LimitExceeded",
    "LogDamaged",
    "ShuttingDown",
    "ProtocolError",
    "InternalError",
]
TIMELINE_ERRORS = [
    "ConversationNotFound",
    "ContextNotFound",
    "BlockNotFound",
    "CrossRefNotFound",
    "InvalidTransition",
    "CycleError",
    "CrossConversationMove",
    "BlockIdConflict",
    "BadQuery",
    "ImportRejected",
    "SlowConsumer",
    "DiskFull",
    "StorageError",
    "FatalStorageError",
    *_COMMON,
]
ADMIN_ERRORS = [
    "ReportNotFound",
    "ConfigError",
    "FeatureUnavailable",
    "StorageError",
    "StateLocked",
    "BootFailed",
    "DaemonUnavailable",
    "BackupFailed",
    *_COMMON,
]


# --- the interfaces ----------------------------------------------------------------------------

TIMELINE_METHODS: list[Method[Any, Any]] = [
    Method(
        "CreateConversation",
        cmd.CreateConversation,
        ConversationReply,
        doc="A new conversation with its root context (active, focused).",
    ),
    Method(
        "ListConversations",
        ListConversationsParams,
        ConversationsReply,
        doc="Conversations in creation order; pass `next` as `after` for the next page.",
    ),
    Method("GetConversation", ByIdParams, ConversationReply),
    Method(
        "UpdateConversation",
        cmd.UpdateConversation,
        ConversationReply,
        doc="Rename, or replace the metadata object, or both.",
    ),
    Method(
        "ArchiveConversation",
        cmd.ArchiveConversation,
        ConversationReply,
        doc="The conversation becomes read-only.",
    ),
    Method(
        "SpawnSidebar",
        cmd.SpawnSidebar,
        ContextReply,
        doc="A sidebar of `parent_id`: active and focused; it inherits the parent's last\n"
        "`inherit_last` blocks as of now; the parent becomes paused.",
    ),
    Method("PauseContext", cmd.PauseContext, ContextReply, doc="active -> paused."),
    Method("ResumeContext", cmd.ResumeContext, ContextReply, doc="paused -> active; takes focus."),
    Method(
        "MergeContext",
        cmd.MergeContext,
        ContextReply,
        doc="A sidebar becomes merged; a system block with the summary is appended to its\n"
        "parent, which becomes active and takes focus.",
    ),
    Method(
        "ArchiveContext",
        cmd.ArchiveContext,
        ContextReply,
        doc="Any status but archived -> archived; focus moves to the parent.",
    ),
    Method("RestoreContext", cmd.RestoreContext, ContextReply, doc="archived -> paused."),
    Method(
        "ReparentContext",
        cmd.ReparentContext,
        ContextReply,
        doc="Moves the context and its subtree under `new_parent_id` (same conversation).",
    ),
    Method("GetContext", ByIdParams, ContextReply, doc="The context with its tags and cross-refs."),
    Method(
        "GetTree",
        GetTreeParams,
        ContextsReply,
        doc="Every context of a conversation in creation order, the root first.",
    ),
    Method("Focus", cmd.Focus, ContextReply, doc="Moves the focus to an active or paused context."),
    Method(
        "GetStartupState",
        EmptyParams,
        StartupStateReply,
        doc="What a chat UI needs on start: whether anything exists, the focused context,\n"
        "the last active conversation.",
    ),
    Method(
        "AppendBlock",
        cmd.AppendBlock,
        AppendResult,
        doc="Appends a block to an active or paused context; acknowledged once durable.\n"
        "A repeated call with the same `id` and content returns the stored block.",
    ),
    Method("GetBlock", ByIdParams, BlockReply),
    Method(
        "ListBlocks",
        ListBlocksParams,
        BlocksReply,
        doc="A context's own blocks by position. Forward with `after`, backward with `before`\n"
        "(pass `next` back as the same parameter); filters by roles and time range.\n"
        "A page holds fewer than `limit` blocks (and `next`) when more would pass\n"
        "limits.max_message_bytes; never none while blocks remain.",
    ),
    Method(
        "GetHistory",
        GetHistoryParams,
        HistoryReply,
        doc="What a model is given for a context: the blocks inherited from each ancestor\n"
        "as of its spawn, then its own; each says which context it came from.\n"
        "Whole or refused: LimitExceeded when it would pass limits.max_message_bytes\n"
        "(ask for the last blocks only with `limit`).",
    ),
    Method(
        "SearchBlocks",
        SearchBlocksParams,
        SearchReply,
        doc="Full-text search (FTS5), best first, with a snippet of the match.",
    ),
    Method(
        "GetConversationStats",
        ByIdParams,
        StatsReply,
        doc="Blocks per role, tokens in/out, time taken, contexts per status.",
    ),
    Method("SetTags", cmd.SetTags, ContextReply, doc="Replaces the context's tag set."),
    Method(
        "AddCrossRef",
        cmd.AddCrossRef,
        CrossRefReply,
        doc="A cross-reference between two contexts.",
    ),
    Method("RevokeCrossRef", cmd.RevokeCrossRef, CrossRefReply),
    Method(
        "Watch",
        WatchParams,
        WatchReply,
        doc="Streams (call with `more`) the committed events past `after_seq`, read from the\n"
        "log, then every new event as it commits, without gap or repeat; only the\n"
        "conversation's events with `conversation_id`. The first reply after the catch-up has\n"
        "`live` set (sent at once, empty, without `after_seq`): from then on nothing is missed.\n"
        "A watcher that falls too far behind gets SlowConsumer and may reconnect with\n"
        "`after_seq` set to the last seq it received. The stream ends only with an error.",
    ),
    Method(
        "ExportConversation",
        ByIdParams,
        ExportPart,
        doc="Streams (call with `more`) the conversation as parts, one member set in each: the\n"
        "header (conversation and tree), the audit events behind them exactly as the log holds\n"
        "them, the blocks, and the end (counts), last. All of it as of one snapshot. Joined,\n"
        "the parts are the `document` of ImportConversation; `timelinectl export` writes one\n"
        "part per line.",
    ),
    Method(
        "ImportConversation",
        ImportConversationParams,
        ConversationReply,
        doc="Checks an export against itself (every event's hash; replaying the events must\n"
        "give the header's conversation and tree and the document's blocks), then re-creates\n"
        "it through normal events naming their source (`imported_from`, `original_hash`).\n"
        'Mode "new" (default) gives everything new ids; "keep" keeps the ids and is refused\n'
        "when one exists. A refused document gets ImportRejected with the reason.",
    ),
]

ADMIN_METHODS: list[Method[Any, Any]] = [
    Method(
        "GetStatus",
        EmptyParams,
        StatusReply,
        doc="Version, log head, boot verdict, verifier state, connections, writer queue.",
    ),
    Method(
        "ReadLog",
        ReadLogParams,
        ReadLogReply,
        doc="Committed log events with seq > after_seq, exactly as in the log; pass `next`\n"
        "as `after_seq` for the next page. Fewer than `limit` when more would pass\n"
        "limits.max_message_bytes; never none while events remain.",
    ),
    Method(
        "GetRecoveryReport",
        GetRecoveryReportParams,
        RecoveryReportReply,
        doc="A report by id, or without id the latest crash-recovery report (none if every\n"
        "boot was clean).",
    ),
    Method(
        "ListReports",
        ListReportsParams,
        ReportsReply,
        doc="Boot, recovery and repair reports, newest first.",
    ),
    Method(
        "Verify",
        VerifyParams,
        VerifyReply,
        doc="Starts a verification run of the log and the state; with `wait`, returns its\n"
        "result when done.",
    ),
    Method(
        "GetVerifyReport", EmptyParams, VerifyReportReply, doc="The latest verification report."
    ),
    Method(
        "Repair",
        EmptyParams,
        RepairReply,
        doc="Rebuilds the state from the log and swaps it in; the old file is quarantined.",
    ),
    Method(
        "Reload",
        EmptyParams,
        ReloadReply,
        doc="Re-reads config.toml and applies what can change without a restart.",
    ),
    Method(
        "GetMetrics",
        EmptyParams,
        MetricsReply,
        doc="Counters, gauges and histograms in the Prometheus text format: appends, batch\n"
        "sizes, fsync latency, queue depth, connections, watchers, verify runs and drift,\n"
        "the boot verdict.",
    ),
]

_DOC_TAIL = (
    "\n\nErrors are sent as io.timelined.<Name>, the names declared below, whichever\n"
    "interface the method belongs to."
)

TIMELINE = Interface(
    name=TIMELINE_NAME,
    doc="timelined: conversations, their trees of contexts, and the blocks of each context."
    + _DOC_TAIL,
    methods=TIMELINE_METHODS,
    errors=[E[name] for name in TIMELINE_ERRORS],
)

ADMIN = Interface(
    name=ADMIN_NAME,
    doc="timelined administration: status, the raw audit log, reports, verification, reload."
    + _DOC_TAIL,
    methods=ADMIN_METHODS,
    errors=[E[name] for name in ADMIN_ERRORS],
)

INTERFACES = (TIMELINE, ADMIN)

METHODS: dict[str, Method[Any, Any]] = {
    f"{interface.name}.{m.name}": m for interface in INTERFACES for m in interface.methods
}
"""Every method by its full name (`io.timelined.Timeline.AppendBlock`)."""
