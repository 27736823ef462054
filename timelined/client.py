"""The client library: a typed method per Varlink method of timelined, async and blocking.

    from timelined.client import Client

    with Client() as tl:                       # $TIMELINED_SOCKET, else the config's socket
        conv = tl.create_conversation("Trip planning")
        tl.append_block(conv.root_context_id, "user", "Where should we go?")
        side = tl.spawn_sidebar(conv.root_context_id, "look up trains", inherit_last=1)
        for item in tl.get_history(side.id):
            print(item.source_context_id, item.block.role, item.block.content)

`AsyncClient` has the same methods as coroutines (anyio: asyncio or trio). Both are safe to
share. `Client` keeps a small pool of connections: consecutive calls reuse one, concurrent
threads each get their own. `AsyncClient` sends the calls of concurrent tasks on one shared
connection, pipelined (replies come back in order; a task cancelled while it waits leaves the
connection usable), and gives each stream a connection of its own.

Streams: `watch(...)` and `export_conversation(id)` return iterators (`async for` over what the
AsyncClient's coroutine returns). The call returns once the first reply is in, so a refusal
(ConversationNotFound, …) is raised by the call itself, and a watch is subscribed when `watch`
returns: every event committed from then on is delivered.

    with Client() as tl:
        for event in tl.watch(after_seq=0):          # the log so far, then live; Ctrl-C ends
            print(event.seq, event.type, event.data)
        parts = list(tl.export_conversation(conv.id))
        copy = other.import_conversation(parts)     # into another daemon (other: a Client)

Replies are the model Structs of `timelined.state.model` (and the reply Structs of
`timelined.api` where a reply has several parts, e.g. a page and its `next` cursor),
decoded with msgspec straight from the wire. Errors are raised as the same named exception
classes the daemon raises (`timelined.errors`: `ContextNotFound`, `InvalidTransition`, …) with
their parameters (`exc.params`, and each parameter as an attribute, e.g. `exc.id`); the Varlink
service errors as `InvalidParameter`, `MethodNotFound`, `MethodNotImplemented`,
`InterfaceNotFound`, `ExpectedMore` (below); an error name this library does not know as
`RemoteError`. A daemon that is not running raises `DaemonUnavailable`, saying where it looked
and why it failed.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import msgspec

from timelined.api import (
    METHODS,
    BlockReply,
    BlocksReply,
    ContextReply,
    ContextsReply,
    ConversationReply,
    ConversationsReply,
    CrossRefReply,
    CrossRefsReply,
    HistoryReply,
    LogEvent,
    MetricsReply,
    ReadLogReply,
    RecoveryReportReply,
    ReloadReply,
    RepairReply,
    ReportsReply,
    SearchReply,
    StartupStateReply,
    StatsReply,
    Status,
    StatusReply,
    VerifyReply,
    VerifyReportReply,
    WatchReply,
)
from timelined.api.exchange import ExportDocument, ExportPart
from timelined.api.methods import Declared, Timeline
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
from timelined.api.reports import Report, ReportInfo
from timelined.api.timeline import AppendedBlock, AppendResult
from timelined.api.transparency import (
    CheckpointKeyReply,
    CheckpointReply,
    ConsistencyProofReply,
    InclusionProofReply,
)
from timelined.client_common import (
    ADMIN,
    SERVICE,
    TIMELINE,
    ExpectedMore,
    InterfaceNotFound,
    InvalidParameter,
    MethodNotFound,
    MethodNotImplemented,
    RemoteError,
    VarlinkServiceError,
    call_params,
    check_finite,
    error_from_reply,
    export_document,
    hangs_up,
    local_error,
    log_event,
    socket_path,
    to_json,
)
from timelined.client_sync import Client
from timelined.commands import NewBlock
from timelined.errors import CheckpointInvalid, DaemonUnavailable, ProtocolError
from timelined.events import SubBlock
from timelined.transparency import audit as trust
from timelined.transparency import exportcheck
from timelined.varlink.client import AsyncVarlinkClient
from timelined.varlink.errors import VarlinkErrorReply
from timelined.varlink.service import GetInfoReply, GetInterfaceDescriptionReply

__all__ = [
    "AsyncClient",
    "Client",
    "DaemonUnavailable",
    "ExpectedMore",
    "InterfaceNotFound",
    "InvalidParameter",
    "LogEvent",
    "MethodNotFound",
    "MethodNotImplemented",
    "RemoteError",
    "VarlinkServiceError",
    "error_from_reply",
    "log_event",
    "socket_path",
    "to_json",
]

T = TypeVar("T")
P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)


async def _watch_events(
    first: WatchReply, replies: AsyncGenerator[WatchReply, None]
) -> AsyncGenerator[LogEvent, None]:
    try:
        for raw in first.events:
            yield log_event(raw)
        async for reply in replies:
            for raw in reply.events:
                yield log_event(raw)
    finally:
        await replies.aclose()


async def _then(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


class AsyncClient:
    """timelined over Varlink: a typed method per Varlink method; safe to share."""

    # Where the two clients differ: the blocking one takes a socket timeout (an anyio program
    # sets its deadlines with cancel scopes). tools/async_to_sync.py keeps the `else` branch.
    if True:  # ASYNC

        def __init__(
            self, socket: str | os.PathLike[str] | None = None, *, max_idle: int = 8
        ) -> None:
            self.socket_path = socket_path(socket)
            self._max_idle = max_idle
            self._varlink = self._pool()

        def _pool(self) -> AsyncVarlinkClient:
            return AsyncVarlinkClient(
                self.socket_path, max_idle=self._max_idle, map_error=local_error
            )

    else:

        def __init__(
            self,
            socket: str | os.PathLike[str] | None = None,
            *,
            timeout: float | None = None,
            max_idle: int = 8,
        ) -> None:
            self.socket_path = socket_path(socket)
            self._timeout = timeout
            self._max_idle = max_idle
            self._varlink = self._pool()

        def _pool(self) -> AsyncVarlinkClient:
            return AsyncVarlinkClient(
                self.socket_path,
                timeout=self._timeout,
                max_idle=self._max_idle,
                map_error=local_error,
            )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._varlink.aclose()

    async def _call(self, method: str, params: Any, reply: type[T]) -> T:
        try:
            return await self._varlink.call_typed(method, params, reply)
        except VarlinkErrorReply as exc:
            await self._after_error(exc)
            raise error_from_reply(exc) from None

    async def _after_error(self, exc: VarlinkErrorReply) -> None:
        if hangs_up(exc.name):
            old, self._varlink = self._varlink, self._pool()
            await old.aclose()  # idle connections now; busy ones as their calls end

    async def call(self, method: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Any method by its full name; the reply as its typed Struct (declared methods) or
        as a dict (org.varlink.service and methods this library does not declare)."""
        declared = METHODS.get(method)
        check_finite(parameters or {})
        if declared is not None:
            return await self._call(method, parameters or {}, declared.reply)
        try:
            return await self._varlink.call(method, parameters)
        except VarlinkErrorReply as exc:
            await self._after_error(exc)
            raise error_from_reply(exc) from None

    async def _replies(
        self, varlink: AsyncVarlinkClient, method: str, params: Any, reply: type[T]
    ) -> AsyncGenerator[T, None]:
        stream = cast(AsyncGenerator[T, None], varlink.stream_typed(method, params, reply))
        try:
            async for item in stream:
                yield item
        except VarlinkErrorReply as exc:
            await self._after_error(exc)
            raise error_from_reply(exc) from None
        finally:
            await stream.aclose()  # mid-stream: its connection is closed, never reused

    def stream(
        self,
        method: str,
        parameters: Mapping[str, Any] | None = None,
        reply_type: type[Any] | None = None,
    ) -> AsyncIterator[Any]:
        """Any streaming method by its full name (a `more` call): its replies, typed as the
        declared reply (else `reply_type`, else dicts; `msgspec.Raw` gives the bytes)."""
        declared = METHODS.get(method)
        tp = reply_type or (declared.reply if declared is not None else dict[str, Any])
        return self._replies(self._varlink, method, parameters or {}, tp)

    async def _open_stream(
        self, varlink: AsyncVarlinkClient, method: str, params: Any, reply: type[T]
    ) -> tuple[T, AsyncGenerator[T, None]]:
        """The first reply (a refusal is raised here) and the stream of the rest."""
        replies = self._replies(varlink, method, params, reply)
        try:
            first = await anext(replies)
        except StopAsyncIteration:
            raise ProtocolError(f"{method} sent no reply") from None
        except BaseException:
            await replies.aclose()
            raise
        return first, replies

    # any declared method, typed by its declaration

    async def invoke(
        self, method: Declared[P, R], params: P | Mapping[str, Any] | None = None
    ) -> R:
        """Any declared method by its declaration (`timelined.api.Timeline.AppendBlocks`):
        `params` its parameter Struct or a mapping, the reply its reply Struct. A method
        declared in timelined/api/methods.py needs no client change to be called."""
        check_finite(params or {})
        return await self._call(method.full_name, params or {}, method.method.reply)

    async def invoke_stream(
        self, method: Declared[P, R], params: P | Mapping[str, Any] | None = None
    ) -> AsyncGenerator[R, None]:
        """A streaming method (a `more` call) by its declaration: returns once the first reply
        is in (a refusal is raised here); iterate the result for every typed reply."""
        check_finite(params or {})
        first, rest = await self._open_stream(
            self._varlink, method.full_name, params or {}, method.method.reply
        )
        return _then(first, rest)

    # org.varlink.service

    async def get_info(self) -> GetInfoReply:
        return await self._call(SERVICE + "GetInfo", {}, GetInfoReply)

    async def get_interface_description(self, interface: str) -> str:
        reply = await self._call(
            SERVICE + "GetInterfaceDescription",
            {"interface": interface},
            GetInterfaceDescriptionReply,
        )
        return reply.description

    # conversations

    async def create_conversation(
        self, name: str, metadata: Mapping[str, Any] | None = None
    ) -> Conversation:
        params = call_params(name=name, metadata=metadata)
        reply = await self._call(TIMELINE + "CreateConversation", params, ConversationReply)
        return reply.conversation

    async def list_conversations(
        self,
        include_archived: bool = False,
        limit: int | None = None,
        after: int | None = None,
        name: str | None = None,
    ) -> ConversationsReply:
        params = call_params(
            include_archived=include_archived or None, limit=limit, after=after, name=name
        )
        return await self._call(TIMELINE + "ListConversations", params, ConversationsReply)

    async def get_conversation(self, id: str) -> Conversation:
        reply = await self._call(TIMELINE + "GetConversation", {"id": id}, ConversationReply)
        return reply.conversation

    async def update_conversation(
        self, id: str, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Conversation:
        params = call_params(id=id, name=name, metadata=metadata)
        reply = await self._call(TIMELINE + "UpdateConversation", params, ConversationReply)
        return reply.conversation

    async def archive_conversation(self, id: str, reason: str | None = None) -> Conversation:
        params = call_params(id=id, reason=reason)
        reply = await self._call(TIMELINE + "ArchiveConversation", params, ConversationReply)
        return reply.conversation

    async def get_conversation_stats(self, id: str) -> ConversationStats:
        reply = await self._call(TIMELINE + "GetConversationStats", {"id": id}, StatsReply)
        return reply.stats

    async def export_conversation(self, id: str) -> AsyncGenerator[ExportPart, None]:
        """The conversation as export parts (header, contexts, events, blocks, proofs, end:
        docs/interfaces.md), streamed; returns once the header is in (a refusal is raised
        here). Iterate the result for every part."""
        first, rest = await self._open_stream(
            self._varlink, TIMELINE + "ExportConversation", {"id": id}, ExportPart
        )
        return _then(first, rest)

    async def import_conversation(
        self, document: ExportDocument | Iterable[ExportPart], mode: str | None = None
    ) -> Conversation:
        """Import an export (a document, or its parts); mode "new" (default) or "keep"."""
        params = call_params(document=export_document(document), mode=mode)
        reply = await self._call(TIMELINE + "ImportConversation", params, ConversationReply)
        return reply.conversation

    async def watch(
        self, conversation_id: str | None = None, after_seq: int | None = None
    ) -> AsyncGenerator[LogEvent, None]:
        """Events past `after_seq` (from the log), then every new one as it commits.

        Returns once the watch is subscribed; iterate the result. The watch has a connection
        of its own, with no timeout (it may be idle for long); closing the iterator closes it.
        A watcher that falls too far behind gets SlowConsumer: watch again with `after_seq` =
        the last seq it received.
        """
        params = call_params(conversation_id=conversation_id, after_seq=after_seq)
        # Its own connection, which ends with it.
        own = AsyncVarlinkClient(self.socket_path, max_idle=0, map_error=local_error)
        first, rest = await self._open_stream(own, TIMELINE + "Watch", params, WatchReply)
        return _watch_events(first, rest)

    # contexts

    async def _context(self, method: str, params: dict[str, Any]) -> Context:
        reply = await self._call(TIMELINE + method, params, ContextReply)
        return reply.context

    async def spawn_sidebar(
        self, parent_id: str, reason: str, inherit_last: int | None = None
    ) -> Context:
        params = call_params(parent_id=parent_id, reason=reason, inherit_last=inherit_last)
        return await self._context("SpawnSidebar", params)

    async def pause_context(self, id: str) -> Context:
        return await self._context("PauseContext", {"id": id})

    async def resume_context(self, id: str) -> Context:
        return await self._context("ResumeContext", {"id": id})

    async def merge_context(self, id: str, summary: str | None = None) -> Context:
        return await self._context("MergeContext", call_params(id=id, summary=summary))

    async def archive_context(self, id: str, reason: str | None = None) -> Context:
        return await self._context("ArchiveContext", call_params(id=id, reason=reason))

    async def restore_context(self, id: str) -> Context:
        return await self._context("RestoreContext", {"id": id})

    async def reparent_context(self, id: str, new_parent_id: str) -> Context:
        return await self._context("ReparentContext", {"id": id, "new_parent_id": new_parent_id})

    async def get_context(self, id: str) -> Context:
        return await self._context("GetContext", {"id": id})

    async def focus(self, context_id: str) -> Context:
        return await self._context("Focus", {"context_id": context_id})

    async def set_tags(self, context_id: str, tags: list[str]) -> Context:
        return await self._context("SetTags", {"context_id": context_id, "tags": list(tags)})

    async def get_tree(self, conversation_id: str, after: int | None = None) -> list[Context]:
        """The whole tree (the contexts created after seq `after`, with it): a tree too large
        for one reply takes a call per page."""
        params: dict[str, Any] = call_params(conversation_id=conversation_id, after=after)
        contexts: list[Context] = []
        while True:
            reply = await self._call(TIMELINE + "GetTree", params, ContextsReply)
            contexts.extend(reply.contexts)
            if reply.next is None:
                return contexts
            params["after"] = reply.next

    async def get_startup_state(self) -> StartupState:
        reply = await self._call(TIMELINE + "GetStartupState", {}, StartupStateReply)
        return reply.state

    async def add_crossref(
        self, from_id: str, to_id: str, kind: str, note: str | None = None
    ) -> CrossRef:
        params = call_params(from_id=from_id, to_id=to_id, kind=kind, note=note)
        reply = await self._call(TIMELINE + "AddCrossRef", params, CrossRefReply)
        return reply.crossref

    async def revoke_crossref(self, id: str) -> CrossRef:
        reply = await self._call(TIMELINE + "RevokeCrossRef", {"id": id}, CrossRefReply)
        return reply.crossref

    async def list_crossrefs(
        self, context_id: str, *, after: int | None = None, limit: int | None = None
    ) -> CrossRefsReply:
        """A page of the context's live cross-references (ListCrossRefs); `next` names the rest.
        A context's are in `Context.crossrefs` too, unless `crossrefs_omitted` says they did
        not fit one reply: then page them here."""
        params = call_params(context_id=context_id, after=after, limit=limit)
        return await self._call(TIMELINE + "ListCrossRefs", params, CrossRefsReply)

    # blocks

    async def append_block(
        self,
        context_id: str,
        role: str,
        content: str,
        *,
        id: str | None = None,
        timestamp: str | None = None,
        time_taken: float | None = None,
        tokens_input: int | None = None,
        tokens_output: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        sub_blocks: list[SubBlock] | list[Mapping[str, Any]] | None = None,
    ) -> AppendResult:
        """Append a block; durable when this returns. Pass `id` to make a retry safe."""
        params = {"context_id": context_id, "role": role, "content": content}
        if id is not None:
            params["id"] = id
        if timestamp is not None or time_taken is not None or tokens_input is not None:
            params.update(
                call_params(timestamp=timestamp, time_taken=time_taken, tokens_input=tokens_input)
            )
        if tokens_output is not None or metadata is not None or sub_blocks is not None:
            params.update(
                call_params(tokens_output=tokens_output, metadata=metadata, sub_blocks=sub_blocks)
            )
        return await self._call(TIMELINE + "AppendBlock", params, AppendResult)

    async def append_blocks(
        self, context_id: str, blocks: Sequence[NewBlock | Mapping[str, Any]]
    ) -> list[AppendedBlock]:
        """Append `blocks` to one context, all or none; durable when this returns. Give each
        block an `id` to make a retry safe. Each block: AppendBlock's parameters but
        `context_id` (a `timelined.commands.NewBlock` or a mapping). Returns each block's id,
        seq and position in the call's order (`existed`: stored before, by an earlier try),
        not the blocks themselves: the caller has them."""
        params = {"context_id": context_id, "blocks": list(blocks)}
        return (await self.invoke(Timeline.AppendBlocks, params)).blocks

    async def get_block(self, id: str) -> Block:
        reply = await self._call(TIMELINE + "GetBlock", {"id": id}, BlockReply)
        return reply.block

    async def list_blocks(
        self,
        context_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        roles: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        include_retracted: bool = False,
    ) -> BlocksReply:
        params = call_params(
            context_id=context_id,
            after=after,
            before=before,
            limit=limit,
            roles=roles,
            since=since,
            until=until,
            include_retracted=include_retracted or None,
        )
        return await self._call(TIMELINE + "ListBlocks", params, BlocksReply)

    async def retract_block(self, id: str, reason: str | None = None) -> Block:
        """Hide a block from history, ListBlocks and search (RetractBlock); returns it."""
        params = call_params(id=id, reason=reason)
        reply = await self._call(TIMELINE + "RetractBlock", params, BlockReply)
        return reply.block

    async def get_history(self, context_id: str, limit: int | None = None) -> list[HistoryBlock]:
        params = call_params(context_id=context_id, limit=limit)
        reply = await self._call(TIMELINE + "GetHistory", params, HistoryReply)
        return reply.blocks

    async def search_blocks(
        self,
        query: str,
        *,
        conversation_id: str | None = None,
        context_id: str | None = None,
        role: str | None = None,
        limit: int | None = None,
    ) -> list[SearchHit]:
        params = call_params(
            query=query,
            conversation_id=conversation_id,
            context_id=context_id,
            role=role,
            limit=limit,
        )
        reply = await self._call(TIMELINE + "SearchBlocks", params, SearchReply)
        return reply.hits

    # admin

    async def get_status(self) -> Status:
        reply = await self._call(ADMIN + "GetStatus", {}, StatusReply)
        return reply.status

    async def read_log(self, after_seq: int = 0, limit: int | None = None) -> ReadLogReply:
        """Raw log events: `events` are the log's lines byte for byte (`msgspec.Raw`; decode
        with `msgspec.json.decode`, or hash `bytes(raw)` to check the chain)."""
        params = call_params(after_seq=after_seq, limit=limit)
        return await self._call(ADMIN + "ReadLog", params, ReadLogReply)

    async def get_recovery_report(self, id: str | None = None) -> Report | None:
        reply = await self._call(
            ADMIN + "GetRecoveryReport", call_params(id=id), RecoveryReportReply
        )
        return reply.report

    async def list_reports(
        self, limit: int | None = None, kind: str | None = None
    ) -> list[ReportInfo]:
        reply = await self._call(
            ADMIN + "ListReports", call_params(limit=limit, kind=kind), ReportsReply
        )
        return reply.reports

    async def verify(self, wait: bool = False) -> VerifyReply:
        return await self._call(ADMIN + "Verify", {"wait": wait}, VerifyReply)

    async def get_verify_report(self) -> dict[str, Any] | None:
        reply = await self._call(ADMIN + "GetVerifyReport", {}, VerifyReportReply)
        return reply.report

    async def repair(self) -> dict[str, Any] | None:
        reply = await self._call(ADMIN + "Repair", {}, RepairReply)
        return reply.result

    async def reload(self) -> ReloadReply:
        return await self._call(ADMIN + "Reload", {}, ReloadReply)

    async def get_metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format."""
        return (await self._call(ADMIN + "GetMetrics", {}, MetricsReply)).text

    # --- verifiable history (docs/transparency.md) ---

    async def get_checkpoint(self) -> str:
        """A signed checkpoint (C2SP signed note) of the log's Merkle tree, unverified."""
        return (await self._call(ADMIN + "GetCheckpoint", {}, CheckpointReply)).checkpoint

    async def get_checkpoint_key(self) -> str:
        """The note verifier key of the daemon's checkpoint key (compare it out of band)."""
        return (await self._call(ADMIN + "GetCheckpointKey", {}, CheckpointKeyReply)).verifier_key

    async def get_inclusion_proof(
        self, seq: int, tree_size: int | None = None
    ) -> InclusionProofReply:
        params = call_params(seq=seq, tree_size=tree_size)
        return await self._call(ADMIN + "GetInclusionProof", params, InclusionProofReply)

    async def get_consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        params = call_params(old_size=old_size, new_size=new_size)
        reply = await self._call(ADMIN + "GetConsistencyProof", params, ConsistencyProofReply)
        return reply.hashes

    async def audit(
        self, state_file: str | os.PathLike[str], verifier_key: str | None = None
    ) -> trust.AuditResult:
        """Verify the daemon's current checkpoint against the one remembered in `state_file`
        (its signature, then that its tree extends the remembered one), then remember it.

        Raises `CheckpointInvalid` (bad signature, another key) or `HistoryRewritten` (the
        log's past changed: a rewrite, a truncation or a fork). The first audit trusts
        `verifier_key`, or the daemon's own key when none is given.
        """
        remembered = trust.load_remembered(state_file)
        tofu = remembered is None and verifier_key is None
        if remembered is not None:
            key = remembered.verifier_key
        else:
            key = verifier_key if verifier_key is not None else await self.get_checkpoint_key()
        verifier = trust.parse_verifier(key)
        new = trust.open_signed(await self.get_checkpoint(), verifier)
        old_size: int | None = None
        if remembered is not None:
            old = trust.open_signed(remembered.checkpoint, verifier)
            old_size = old.checkpoint.size
            if old.checkpoint.size < new.checkpoint.size and old.checkpoint.size > 0:
                hashes = await self.get_consistency_proof(old_size, new.checkpoint.size)
            else:
                hashes = []
            trust.check_extends(old, new, lambda _a, _b: hashes)
        trust.remember(state_file, trust.Remembered(key, new.text))
        cp = new.checkpoint
        return trust.AuditResult(
            origin=cp.origin,
            old_size=old_size,
            new_size=cp.size,
            root=base64.b64encode(cp.root).decode(),
            key_trusted_on_first_use=tofu,
            checkpoint=new.text,
        )

    async def prove_event(self, seq: int, state_file: str | os.PathLike[str]) -> trust.ProvenEvent:
        """Event `seq`'s log line, proven to be in the daemon's current checkpoint after an
        `audit(state_file)` of that checkpoint (signature, then consistency with the one
        remembered). Raises CheckpointInvalid when the proof does not lead to it."""
        audited = await self.audit(state_file)
        remembered = trust.load_remembered(state_file)
        assert remembered is not None  # the audit just wrote it
        verifier = trust.parse_verifier(remembered.verifier_key)
        signed = trust.open_signed(audited.checkpoint, verifier)
        size = signed.checkpoint.size
        if seq > size:
            raise CheckpointInvalid(f"event {seq} is not in the checkpoint (tree size {size})")
        proof = await self.get_inclusion_proof(seq, size)
        events = (await self.read_log(after_seq=seq - 1, limit=1)).events
        line = bytes(events[0]) if events else b""
        trust.check_inclusion(signed, seq, line, proof.hashes)
        return trust.ProvenEvent(
            seq, line.decode(), proof.leaf_index, size, proof.hashes, audited.checkpoint
        )

    async def get_block_proven(
        self, id: str, state_file: str | os.PathLike[str]
    ) -> tuple[Block, trust.ProvenEvent]:
        """A block read with the proof that the log holds it as read: its event's inclusion in
        an audited checkpoint (`prove_event`) and the event's block equal to the one read."""
        block = await self.get_block(id)
        proven = await self.prove_event(block.seq, state_file)
        trust.check_block_line(proven.line.encode(), block)
        return block, proven

    async def verify_export(
        self, parts: Iterable[ExportPart], checkpoint: str, verifier_key: str
    ) -> exportcheck.ExportVerification:
        """Prove an export against `checkpoint`, obtained elsewhere: both signed by
        `verifier_key`, one history (when their sizes differ, the consistency proof is asked
        of this daemon, and checked), and every event line in the export's checkpoint.

        Raises CheckpointInvalid (a signature, or the first event not proven, named) or
        HistoryRewritten (the checkpoints are of two histories)."""
        claim = exportcheck.read_claim(parts, checkpoint, verifier_key)
        sizes = claim.consistency_sizes()
        hashes = None if sizes is None else await self.get_consistency_proof(*sizes)
        return exportcheck.check_claim(claim, hashes)
