"""Every method of the two interfaces, declared once: name, parameters, reply, doc, access class.

The access class is what the peer authorization grants by (`timelined.daemon.auth`):

- `read`: changes nothing and starts no work; `[auth] read_only_gids` may call it;
- `write`: changes the state (through the writer); full access only;
- `admin`: acts on the daemon itself (a verification run, a repair, a reload); full access only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, Protocol, TypeVar

import msgspec

from timelined import commands as cmd
from timelined import errors as err
from timelined.api.admin import (
    GetRecoveryReportParams,
    ListReportsParams,
    MetricsReply,
    ReadLogParams,
    ReadLogReply,
    RecoveryReportReply,
    ReloadReply,
    RepairReply,
    ReportsReply,
    StatusReply,
    VerifyParams,
    VerifyReply,
    VerifyReportReply,
)
from timelined.api.errors import ADMIN_ERRORS, TIMELINE_ERRORS, error_def
from timelined.api.exchange import ExportPart
from timelined.api.scalars import EmptyParams
from timelined.api.timeline import (
    AppendBlocksReply,
    AppendResult,
    BlockReply,
    BlocksReply,
    ByIdParams,
    ContextReply,
    ContextsReply,
    ConversationReply,
    ConversationsReply,
    CrossRefReply,
    CrossRefsReply,
    GetHistoryParams,
    GetTreeParams,
    HistoryReply,
    ImportConversationParams,
    ListBlocksParams,
    ListConversationsParams,
    ListCrossRefsParams,
    SearchBlocksParams,
    SearchReply,
    StartupStateReply,
    StatsReply,
    WatchParams,
    WatchReply,
)
from timelined.api.transparency import (
    CheckpointKeyReply,
    CheckpointReply,
    ConsistencyProofReply,
    GetConsistencyProofParams,
    GetInclusionProofParams,
    InclusionProofReply,
)
from timelined.varlink.interface import Interface, Method

TIMELINE_NAME = err.TIMELINE_INTERFACE
ADMIN_NAME = err.ADMIN_INTERFACE

Access = Literal["read", "write", "admin"]


P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Declared(Generic[P, R]):
    """A method with its access class and its interface: the typed handle a client calls any
    declared method by (`AsyncClient.invoke(Timeline.AppendBlocks, params)`)."""

    access: Access
    method: Method[P, R]
    interface: str = ""  # set by `_bind`, from the namespace the method is declared in

    @property
    def full_name(self) -> str:
        """`io.timelined.Timeline.AppendBlocks`: what the call names."""
        return f"{self.interface}.{self.method.name}"


class _Declare(Protocol):
    def __call__(
        self, name: str, params: type[P], reply: type[R], doc: str = ""
    ) -> Declared[P, R]: ...


def _declare(access: Access) -> _Declare:
    def declare(name: str, params: type[P], reply: type[R], doc: str = "") -> Declared[P, R]:
        return Declared(access, Method(name, params, reply, doc))

    return declare


read, write, admin = _declare("read"), _declare("write"), _declare("admin")


def _bind(namespace: type, interface: str) -> tuple[Declared[Any, Any], ...]:
    """The methods declared in `namespace`, in file order, each bound to `interface` (the
    namespace's attributes are replaced by the bound handles)."""
    bound: list[Declared[Any, Any]] = []
    for attr, value in list(vars(namespace).items()):
        if not isinstance(value, Declared):
            continue
        if attr != value.method.name:
            raise TypeError(f"{namespace.__name__}.{attr} declares {value.method.name!r}")
        handle = replace(value, interface=interface)
        setattr(namespace, attr, handle)
        bound.append(handle)
    return tuple(bound)


# --- the interfaces ----------------------------------------------------------------------------


class Timeline:
    """io.timelined.Timeline's methods, each a typed handle (`AsyncClient.invoke`)."""

    CreateConversation = write(
        "CreateConversation",
        cmd.CreateConversation,
        ConversationReply,
        doc="A new conversation with its root context (active, focused).",
    )
    ListConversations = read(
        "ListConversations",
        ListConversationsParams,
        ConversationsReply,
        doc="Conversations in creation order; pass `next` as `after` for the next page.",
    )
    GetConversation = read("GetConversation", ByIdParams, ConversationReply)
    UpdateConversation = write(
        "UpdateConversation",
        cmd.UpdateConversation,
        ConversationReply,
        doc="Rename, or replace the metadata object, or both.",
    )
    ArchiveConversation = write(
        "ArchiveConversation",
        cmd.ArchiveConversation,
        ConversationReply,
        doc="The conversation becomes read-only.",
    )
    SpawnSidebar = write(
        "SpawnSidebar",
        cmd.SpawnSidebar,
        ContextReply,
        doc="A sidebar of `parent_id`: active and focused; it inherits the parent's last\n"
        "`inherit_last` blocks as of now; the parent becomes paused.",
    )
    PauseContext = write("PauseContext", cmd.PauseContext, ContextReply, doc="active -> paused.")
    ResumeContext = write(
        "ResumeContext", cmd.ResumeContext, ContextReply, doc="paused -> active; takes focus."
    )
    MergeContext = write(
        "MergeContext",
        cmd.MergeContext,
        ContextReply,
        doc="A sidebar becomes merged; a system block with the summary is appended to its\n"
        "parent, which becomes active and takes focus.",
    )
    ArchiveContext = write(
        "ArchiveContext",
        cmd.ArchiveContext,
        ContextReply,
        doc="Any status but archived -> archived; focus moves to the parent.",
    )
    RestoreContext = write(
        "RestoreContext", cmd.RestoreContext, ContextReply, doc="archived -> paused."
    )
    ReparentContext = write(
        "ReparentContext",
        cmd.ReparentContext,
        ContextReply,
        doc="Moves the context and its subtree under `new_parent_id` (same conversation).",
    )
    GetContext = read(
        "GetContext", ByIdParams, ContextReply, doc="The context with its tags and cross-refs."
    )
    GetTree = read(
        "GetTree",
        GetTreeParams,
        ContextsReply,
        doc="Every context of a conversation in creation order, the root first. A tree too\n"
        "large for one reply comes in pages: `next` set, pass it back as `after`.",
    )
    Focus = write(
        "Focus", cmd.Focus, ContextReply, doc="Moves the focus to an active or paused context."
    )
    GetStartupState = read(
        "GetStartupState",
        EmptyParams,
        StartupStateReply,
        doc="What a chat UI needs on start: whether anything exists, the focused context,\n"
        "the last active conversation.",
    )
    AppendBlock = write(
        "AppendBlock",
        cmd.AppendBlock,
        AppendResult,
        doc="Appends a block to an active or paused context; acknowledged once durable.\n"
        "A repeated call with the same `id` and content returns the stored block.",
    )
    AppendBlocks = write(
        "AppendBlocks",
        cmd.AppendBlocks,
        AppendBlocksReply,
        doc="Appends `blocks` (at most 1000; the call within limits.max_message_bytes, each\n"
        "block within limits.max_block_bytes) to one context in one atomic step: all at\n"
        "consecutive positions, or none. A block without `id` gets a new one. The reply gives\n"
        "each block's id, seq and position, never its content. A repeated call (every id\n"
        "given, stored with the same content) returns the stored blocks, `existed` true; a\n"
        "call mixing stored and new ids gets BlockIdConflict and writes nothing (unless the\n"
        "stored ones are the context's last blocks and the call's first: a call a crash cut\n"
        "short, which the retry completes). A call whose reply could pass\n"
        "limits.max_message_bytes (many blocks under a small limit) gets LimitExceeded.",
    )
    RetractBlock = write(
        "RetractBlock",
        cmd.RetractBlock,
        BlockReply,
        doc="Hides a block from its context's history, ListBlocks and SearchBlocks with a\n"
        "block.retracted event: the log stays append-only, so the block stays in the log,\n"
        "in GetBlock, in exports (with the retraction) and in ListBlocks with\n"
        "`include_retracted`. Its context must take blocks (active or paused, conversation\n"
        "not archived). A retracted block's retraction again is a safe retry: no new event.",
    )
    GetBlock = read("GetBlock", ByIdParams, BlockReply)
    ListBlocks = read(
        "ListBlocks",
        ListBlocksParams,
        BlocksReply,
        doc="A context's own blocks by position. Forward with `after`, backward with `before`\n"
        "(pass `next` back as the same parameter); filters by roles and time range.\n"
        "Retracted blocks (RetractBlock) are left out unless `include_retracted`.\n"
        "A page holds fewer than `limit` blocks (and `next`) when more would pass\n"
        "limits.max_message_bytes; never none while blocks remain.",
    )
    GetHistory = read(
        "GetHistory",
        GetHistoryParams,
        HistoryReply,
        doc="What a model is given for a context: the blocks inherited from each ancestor\n"
        "as of its spawn, then its own; each says which context it came from.\n"
        "Whole or refused: LimitExceeded when it would pass limits.max_message_bytes\n"
        "(ask for the last blocks only with `limit`).",
    )
    SearchBlocks = read(
        "SearchBlocks",
        SearchBlocksParams,
        SearchReply,
        doc="Full-text search (FTS5), best first, with a snippet of the match.",
    )
    GetConversationStats = read(
        "GetConversationStats",
        ByIdParams,
        StatsReply,
        doc="Blocks per role, tokens in/out, time taken, contexts per status.",
    )
    SetTags = write("SetTags", cmd.SetTags, ContextReply, doc="Replaces the context's tag set.")
    AddCrossRef = write(
        "AddCrossRef",
        cmd.AddCrossRef,
        CrossRefReply,
        doc="A cross-reference between two contexts.",
    )
    RevokeCrossRef = write("RevokeCrossRef", cmd.RevokeCrossRef, CrossRefReply)
    ListCrossRefs = read(
        "ListCrossRefs",
        ListCrossRefsParams,
        CrossRefsReply,
        doc="The context's live cross-references (from it and to it), in the order they were\n"
        "added, a page at a time: `next` set, pass it back as `after`. GetContext and\n"
        "GetTree carry them too, but not those of a context whose cross-references do\n"
        "not fit one reply (`crossrefs_omitted`).",
    )
    Watch = read(
        "Watch",
        WatchParams,
        WatchReply,
        doc="Streams (call with `more`) the committed events past `after_seq`, read from the\n"
        "log, then every new event as it commits, without gap or repeat; only the\n"
        "conversation's events with `conversation_id`. The first reply after the catch-up has\n"
        "`live` set (sent at once, empty, without `after_seq`): from then on nothing is missed.\n"
        "A watcher that falls too far behind gets SlowConsumer and may reconnect with\n"
        "`after_seq` set to the last seq it received. The stream ends only with an error.",
    )
    ExportConversation = read(
        "ExportConversation",
        ByIdParams,
        ExportPart,
        doc="Streams (call with `more`) the conversation as parts, one member set in each: the\n"
        "header (conversation and tree), the audit events behind them exactly as the log holds\n"
        "them, the blocks, each event's inclusion proof (`proofs`) in the tree of the end's\n"
        "signed `checkpoint`, and the end (counts, checkpoint), last. All of it as of one\n"
        "snapshot (the checkpoint and proofs only where the daemon keeps the tree). Joined,\n"
        "the parts are the `document` of ImportConversation; `timelinectl export` writes one\n"
        "part per line.",
    )
    ImportConversation = write(
        "ImportConversation",
        ImportConversationParams,
        ConversationReply,
        doc="Checks an export against itself (every event's hash; replaying the events must\n"
        "give the header's conversation and tree and the document's blocks), then re-creates\n"
        "it through normal events naming their source (`imported_from`, `original_hash`).\n"
        'Mode "new" (default) gives everything new ids; "keep" keeps the ids and is refused\n'
        "when one exists. A refused document gets ImportRejected with the reason.",
    )


TIMELINE_METHODS: tuple[Declared[Any, Any], ...] = _bind(Timeline, TIMELINE_NAME)


class Admin:
    """io.timelined.Admin's methods, each a typed handle (`AsyncClient.invoke`)."""

    GetStatus = read(
        "GetStatus",
        EmptyParams,
        StatusReply,
        doc="Version, log head, boot verdict, verifier state, connections, writer queue.",
    )
    ReadLog = read(
        "ReadLog",
        ReadLogParams,
        ReadLogReply,
        doc="Committed log events with seq > after_seq, exactly as in the log; pass `next`\n"
        "as `after_seq` for the next page. Fewer than `limit` when more would pass\n"
        "limits.max_message_bytes; never none while events remain.",
    )
    GetRecoveryReport = read(
        "GetRecoveryReport",
        GetRecoveryReportParams,
        RecoveryReportReply,
        doc="A report by id, or without id the latest crash-recovery report (none if every\n"
        "boot was clean).",
    )
    ListReports = read(
        "ListReports",
        ListReportsParams,
        ReportsReply,
        doc="Boot, recovery and repair reports, newest first.",
    )
    Verify = admin(
        "Verify",
        VerifyParams,
        VerifyReply,
        doc="Starts a verification run of the log and the state; with `wait`, returns its\n"
        "result when done.",
    )
    GetVerifyReport = read(
        "GetVerifyReport", EmptyParams, VerifyReportReply, doc="The latest verification report."
    )
    Repair = admin(
        "Repair",
        EmptyParams,
        RepairReply,
        doc="Rebuilds the state from the log and swaps it in; the old file is quarantined.",
    )
    Reload = admin(
        "Reload",
        EmptyParams,
        ReloadReply,
        doc="Re-reads config.toml and applies what can change without a restart.",
    )
    GetMetrics = read(
        "GetMetrics",
        EmptyParams,
        MetricsReply,
        doc="Counters, gauges and histograms in the Prometheus text format: appends, batch\n"
        "sizes, fsync latency, queue depth, connections, watchers, verify runs and drift,\n"
        "the boot verdict.",
    )
    # Verifiable history (docs/transparency.md): open to read-only peers, who are the auditors.
    GetCheckpoint = read(
        "GetCheckpoint",
        EmptyParams,
        CheckpointReply,
        doc="A signed checkpoint of the log's Merkle tree as it is now: a C2SP signed note\n"
        "(origin, tree size, base64 root hash; an Ed25519 signature line).",
    )
    GetCheckpointKey = read(
        "GetCheckpointKey",
        EmptyParams,
        CheckpointKeyReply,
        doc="The note verifier key of the checkpoints' signing key.",
    )
    GetInclusionProof = read(
        "GetInclusionProof",
        GetInclusionProofParams,
        InclusionProofReply,
        doc="The RFC 6962 inclusion proof of the event `seq` (leaf seq - 1) in the tree of\n"
        "`tree_size` leaves (default: the current tree); hashes in base64.",
    )
    GetConsistencyProof = read(
        "GetConsistencyProof",
        GetConsistencyProofParams,
        ConsistencyProofReply,
        doc="The RFC 6962 consistency proof from the tree of `old_size` leaves to the tree\n"
        "of `new_size` (default: the current tree); hashes in base64.",
    )


ADMIN_METHODS: tuple[Declared[Any, Any], ...] = _bind(Admin, ADMIN_NAME)


def _doc_tail(name: str) -> str:
    return (
        f"\n\nErrors are named by this interface ({name}.<Name>, declared below) when\n"
        "one of its methods sends them. An error sent outside any call (a frame that is\n"
        f"not a call, a connection over the limit) is named by {TIMELINE_NAME}, or by\n"
        f"{ADMIN_NAME} for the errors only it declares."
    )


TIMELINE = Interface(
    name=TIMELINE_NAME,
    doc="timelined: conversations, their trees of contexts, and the blocks of each context."
    + _doc_tail(TIMELINE_NAME),
    methods=[d.method for d in TIMELINE_METHODS],
    errors=[error_def(cls) for cls in TIMELINE_ERRORS],
)

ADMIN = Interface(
    name=ADMIN_NAME,
    doc="timelined administration: status, the raw audit log, reports, verification, reload."
    + _doc_tail(ADMIN_NAME),
    methods=[d.method for d in ADMIN_METHODS],
    errors=[error_def(cls) for cls in ADMIN_ERRORS],
)

INTERFACES = (TIMELINE, ADMIN)

_DECLARED = ((TIMELINE, TIMELINE_METHODS), (ADMIN, ADMIN_METHODS))

METHODS: dict[str, Method[Any, Any]] = {
    f"{interface.name}.{d.method.name}": d.method for interface, ds in _DECLARED for d in ds
}
"""Every method by its full name (`io.timelined.Timeline.AppendBlock`)."""

ACCESS: dict[str, Access] = {
    f"{interface.name}.{d.method.name}": d.access for interface, ds in _DECLARED for d in ds
}
"""Every method's access class by its full name (what `timelined.daemon.auth` grants by)."""
