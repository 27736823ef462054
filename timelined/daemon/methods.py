"""The Varlink methods: each handler maps one call to an engine command or a read.

Handlers are thin. A write is `app.engine.enqueue(command, actor)`, returned without waiting: the
parameters ARE the command (timelined.commands), the actor is the caller's uid/gid/pid from
SO_PEERCRED, and the server (`@deferring`, varlink/deferred.py) sends the reply when the writer
has answered, so the calls of one connection that arrive together share a batch and one write.
A read is `await app.engine.read(fn, ...)`: one function of `state.queries` or `state.lookup` over a
read-only connection, run in one WAL snapshot, raising the named NotFound error itself so that
the check and the answer agree. No SQL and no report file is read here: the state's reads are
`state/`'s, the reports directory's `recovery/reports.py`'s.

`app` is read at call time (`app.config`, `app.verifier`, `app.reloader`): a reload replaces the
config, and parts such as the verifier may arrive after the server started.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from itertools import islice
from typing import Any, cast

import anyio
import msgspec

from timelined import __version__, exchange
from timelined import commands as cmd
from timelined.api import (
    ADMIN,
    TIMELINE,
    BlockReply,
    BlocksReply,
    BootStatus,
    ByIdParams,
    ConnectionStats,
    ContextReply,
    ContextsReply,
    ConversationReply,
    ConversationsReply,
    CrossRefReply,
    CrossRefsReply,
    EmptyParams,
    GetHistoryParams,
    GetRecoveryReportParams,
    GetTreeParams,
    HistoryReply,
    ImportConversationParams,
    ListBlocksParams,
    ListConversationsParams,
    ListCrossRefsParams,
    ListReportsParams,
    LogStatus,
    MetricsReply,
    ReadLogParams,
    ReadLogReply,
    RecoveryReportReply,
    ReloadReply,
    RepairReply,
    ReportsReply,
    SearchBlocksParams,
    SearchReply,
    StartupStateReply,
    StatsReply,
    Status,
    StatusReply,
    VerifyParams,
    VerifyReply,
    VerifyReportReply,
    WatchParams,
    WatchReply,
    WriterStats,
)
from timelined.api.model import Block, Conversation
from timelined.api.transparency import (
    CheckpointKeyReply,
    CheckpointReply,
    ConsistencyProofReply,
    GetConsistencyProofParams,
    GetInclusionProofParams,
    InclusionProofReply,
)
from timelined.auditlog.source import LogFigures, LogSource
from timelined.daemon.app import App
from timelined.daemon.exportproofs import event_seqs, proven_end
from timelined.daemon.metrics import render as render_metrics
from timelined.daemon.watch import WatchBatch
from timelined.errors import (
    FeatureUnavailable,
    InvalidArgument,
)
from timelined.events import Actor
from timelined.ids import normalize_ts, parse_ts
from timelined.recovery.reports import load_report, report_infos
from timelined.replies import ReplyBudget
from timelined.state import lookup
from timelined.state import queries as q
from timelined.transparency.merkle import ProofError
from timelined.treestore.service import Transparency
from timelined.varlink.budget import ByteBudget
from timelined.varlink.deferred import deferring, reply_like_call
from timelined.varlink.protocol import EXPECTED_MORE, VarlinkErrorReply
from timelined.varlink.server import (
    CallContext,
    Final,
    Handler,
    Live,
    PeerCredentials,
    VarlinkServer,
)
from timelined.writer.batch import Pending

__all__ = ["admin_handlers", "register_all", "timeline_handlers"]

# How long a search waits for the index to reach what was acknowledged before it (the index is
# written at most writer.engine.INDEX_DELAY_S after a commit, at once when a search asks).
SEARCH_INDEX_WAIT_S = 1.0


def register_all(server: VarlinkServer, app: App) -> None:
    """Serve io.timelined.Timeline and io.timelined.Admin on `server` for `app`."""
    server.register(TIMELINE, timeline_handlers(app))
    server.register(ADMIN, admin_handlers(app))


def _actor(peer: PeerCredentials) -> Actor:
    return Actor(uid=peer.uid, gid=peer.gid, pid=peer.pid)


class _Wrapped:
    """A queued command whose reply wraps its result (e.g. in ConversationReply)."""

    __slots__ = ("_pending", "_wrap")

    def __init__(self, pending: Pending, wrap: Callable[[Any], Any]) -> None:
        self._pending = pending
        self._wrap = wrap

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        self._pending.add_done_callback(callback)

    def outcome(self) -> Any:
        return self._wrap(self._pending.outcome())


# --- arguments -------------------------------------------------------------------------------


def _timestamp(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return normalize_ts(value)
    except ValueError as exc:
        raise InvalidArgument(name, f"not an ISO 8601 time: {exc}") from None


# --- watch, export, import ---------------------------------------------------------------------

# Parts pulled per worker-thread step: one, so the next part (up to max_message_bytes) is read
# only once the previous one was written to the socket (back-pressure, issue 18).
EXPORT_PARTS_PER_STEP = 1
IMPORT_VERIFICATIONS = 2  # documents verified at once (CPU and memory); more calls wait
# Exports reading at once, each on a snapshot of its own (a connection holding state.db and its
# WAL open; on PostgreSQL a database connection); more wait, holding nothing, before they read.
# Without a bound one uid's 64 connections held 64 snapshots (192 descriptors with their
# sockets, and SQLite keeps a closed file's descriptor while another connection of the process
# locks the file: as many stayed open after). docs/operations.md derives LimitNOFILE from it.
EXPORT_SNAPSHOTS = 16
EXPORT_SNAPSHOTS_PER_UID = 4  # so that one uid cannot hold every export up (a quarter, as
# max_connections_per_uid)


async def export_stream(
    app: App, conversation_id: str, snapshots: ByteBudget, uid: int
) -> AsyncGenerator[Any, None]:
    """The parts of an export, the last one wrapped in `Final`; it reads within `snapshots`
    (one unit each), counted for `uid`."""
    await snapshots.take(1, uid)
    try:
        snap = await app.engine.read_snapshot()  # sees everything acknowledged before
    except BaseException:
        snapshots.give(1, uid)
        raise
    limit = app.config.limits.max_message_bytes
    seqs: list[int] = []  # the events sent: each gets its inclusion proof before the end
    try:
        parts = exchange.export_parts(
            snap.conn,
            app.log,
            conversation_id,
            snap.meta.last_seq,
            snap.meta.last_hash,
            part_bytes=limit,
        )
        try:
            while True:
                step = await anyio.to_thread.run_sync(
                    lambda: list(islice(parts, EXPORT_PARTS_PER_STEP))
                )
                if not step:
                    raise RuntimeError("the export ended without its end part")
                step.reverse()
                while step:
                    part = step[-1]
                    if part.end is not None:
                        ends = proven_end(app.transparency, part, seqs, limit)
                        async for last in ends:
                            yield Final(last) if last.end is not None else last
                        return
                    seqs.extend(event_seqs(part))
                    del part  # handed over, not kept while it waits in the socket
                    yield step.pop()
        finally:
            parts.close()
    finally:
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(snap.close)
        finally:
            snapshots.give(1, uid)


# --- io.timelined.Timeline ---------------------------------------------------------------------


def timeline_handlers(app: App) -> dict[str, Handler]:
    """The handlers of io.timelined.Timeline, by method name."""

    @deferring
    def conversation_command(p: cmd.Command, ctx: CallContext) -> _Wrapped:
        return _Wrapped(app.engine.enqueue(p, _actor(ctx.peer)), ConversationReply)

    @deferring
    def context_command(p: cmd.Command, ctx: CallContext) -> _Wrapped:
        return _Wrapped(app.engine.enqueue(p, _actor(ctx.peer)), ContextReply)

    @deferring
    def crossref_command(p: cmd.Command, ctx: CallContext) -> _Wrapped:
        return _Wrapped(app.engine.enqueue(p, _actor(ctx.peer)), CrossRefReply)

    # An append answers with its block (or its blocks' ids): its reply is about its call's size,
    # so a connection's pipelined appends share a batch (varlink/deferred.py). The other writes
    # answer with stored state (a context's tags, a conversation's metadata): each reserves a
    # whole frame, and one connection's run one at a time.
    @deferring
    @reply_like_call
    def append_block(p: cmd.AppendBlock, ctx: CallContext) -> Pending:
        # The hot path: the parameters are the command, the result is the reply.
        peer = ctx.peer
        return app.engine.enqueue(p, Actor(peer.uid, peer.gid, peer.pid))

    @deferring
    @reply_like_call
    def append_blocks(p: cmd.AppendBlocks, ctx: CallContext) -> Pending:
        return app.engine.enqueue(p, _actor(ctx.peer))  # the rule's result is the reply

    async def retract_block(p: cmd.RetractBlock, ctx: CallContext) -> BlockReply:
        return BlockReply(cast(Block, await app.engine.submit(p, _actor(ctx.peer))))

    async def list_conversations(
        p: ListConversationsParams, ctx: CallContext
    ) -> ConversationsReply:
        page, next_cursor = await app.engine.read(
            q.list_conversations,
            include_archived=p.include_archived,
            limit=p.limit,
            after=p.after,
            name=p.name,
            budget=ReplyBudget(app.config.limits.max_message_bytes),
        )
        return ConversationsReply(page, next_cursor)

    async def get_conversation(p: ByIdParams, ctx: CallContext) -> ConversationReply:
        return ConversationReply(await app.engine.read(lookup.conversation_or_raise, p.id))

    async def get_context(p: ByIdParams, ctx: CallContext) -> ContextReply:
        # Bounded while it is read: a context's cross-references are not (each call that
        # added one fit), and one past a frame would be built whole before the server refused it.
        limit = app.config.limits.max_message_bytes
        return ContextReply(await app.engine.read(lookup.context_or_raise, p.id, reply_bytes=limit))

    async def get_tree(p: GetTreeParams, ctx: CallContext) -> ContextsReply:
        contexts, next_cursor = await app.engine.read(
            lookup.tree_or_raise,
            p.conversation_id,
            after=p.after,
            reply_bytes=app.config.limits.max_message_bytes,
        )
        return ContextsReply(contexts, next_cursor)

    async def list_crossrefs(p: ListCrossRefsParams, ctx: CallContext) -> CrossRefsReply:
        refs, next_cursor = await app.engine.read(
            lookup.crossrefs_or_raise,
            p.context_id,
            after=p.after,
            limit=p.limit,
            reply_bytes=app.config.limits.max_message_bytes,
        )
        return CrossRefsReply(refs, next_cursor)

    async def get_startup_state(p: EmptyParams, ctx: CallContext) -> StartupStateReply:
        return StartupStateReply(await app.engine.read(q.startup_state))

    async def get_block(p: ByIdParams, ctx: CallContext) -> BlockReply:
        return BlockReply(await app.engine.read(lookup.block_or_raise, p.id))

    async def list_blocks(p: ListBlocksParams, ctx: CallContext) -> BlocksReply:
        since = _timestamp("since", p.since)
        until = _timestamp("until", p.until)
        blocks, next_cursor = await app.engine.read(
            lookup.blocks_or_raise,
            p.context_id,
            limit=p.limit,
            after=p.after,
            before=p.before,
            roles=p.roles or None,
            since=since,
            until=until,
            reply_bytes=app.config.limits.max_message_bytes,
            include_retracted=p.include_retracted,
        )
        return BlocksReply(blocks, next_cursor)

    async def get_history(p: GetHistoryParams, ctx: CallContext) -> HistoryReply:
        blocks = await app.engine.read(
            lookup.history_or_raise,
            p.context_id,
            limit=p.limit,
            reply_bytes=app.config.limits.max_message_bytes,
        )
        return HistoryReply(blocks)

    async def search_blocks(p: SearchBlocksParams, ctx: CallContext) -> SearchReply:
        budget = ReplyBudget(app.config.limits.max_message_bytes)
        # Read-your-writes for search: the index is written after the commits (writer/engine.py);
        # wait, bounded, for what was acknowledged before this call, then answer with what is.
        indexed_seq = await app.engine.index_caught_up(SEARCH_INDEX_WAIT_S)
        hits = await app.engine.read(
            lookup.search_or_raise,
            p.query,
            conversation_id=p.conversation_id,
            context_id=p.context_id,
            role=p.role,
            limit=p.limit,
            budget=budget,
        )
        return SearchReply(hits, truncated=budget.full, indexed_seq=indexed_seq)

    async def get_conversation_stats(p: ByIdParams, ctx: CallContext) -> StatsReply:
        return StatsReply(await app.engine.read(lookup.stats_or_raise, p.id))

    snapshots = ByteBudget(EXPORT_SNAPSHOTS, EXPORT_SNAPSHOTS_PER_UID)  # counts exports

    async def watch(p: WatchParams, ctx: CallContext) -> AsyncIterator[WatchReply | Live[Any]]:
        limits = app.config.limits
        batches = app.watch.watch_batches(
            p.conversation_id,
            p.after_seq,
            reply_bytes=limits.max_message_bytes,
            buffer_bytes=limits.max_connection_buffer_bytes,
            owner=ctx.peer.uid,
        )
        # No local holds a batch while its reply waits in the socket: a client that does not
        # read holds the reply's frame, not its lines a second time (hence the list, popped).
        got: list[WatchBatch] = []
        try:
            while True:
                try:
                    got.append(await anext(batches))
                except StopAsyncIteration:
                    return
                if got[0].live:
                    break
                yield _watch_reply(got.pop())
            # Live from here: each step waits for events, and builds from the watcher's queue
            # (counted in the buffer budget), so the server reserves no frame for it.
            yield Live(_watch_reply(got.pop()))
            while True:
                try:
                    yield _watch_reply(await anext(batches))
                except StopAsyncIteration:
                    return
        finally:
            await batches.aclose()

    async def export_conversation(p: ByIdParams, ctx: CallContext) -> AsyncIterator[Any]:
        if not ctx.more:
            # Its first part alone is a header, not an export: answering with it would hand a
            # client that forgot `more` a truncated document without a word.
            raise VarlinkErrorReply(EXPECTED_MORE, {})  # the standard's: no parameters
        stream = export_stream(app, p.id, snapshots, ctx.peer.uid)
        try:
            while True:
                try:
                    yield await anext(stream)  # no local holds the part (as in `watch`)
                except StopAsyncIteration:
                    return
        finally:
            await stream.aclose()

    verifying: list[anyio.CapacityLimiter] = []

    async def import_conversation(
        p: ImportConversationParams, ctx: CallContext
    ) -> ConversationReply:
        if not verifying:
            verifying.append(anyio.CapacityLimiter(IMPORT_VERIFICATIONS))
        # CPU-heavy (a replay of every event): in a worker thread, off the writer.
        records = await anyio.to_thread.run_sync(
            exchange.verify_document, p.document, limiter=verifying[0]
        )
        events = await anyio.to_thread.run_sync(
            exchange.imported_events, records, p.document, p.mode, limiter=verifying[0]
        )
        command = cmd.ImportEvents(events=events, mode=p.mode)
        result = await app.engine.submit(command, _actor(ctx.peer))
        return ConversationReply(cast(Conversation, result))

    handlers: dict[str, Handler] = {
        "CreateConversation": conversation_command,
        "ListConversations": list_conversations,
        "GetConversation": get_conversation,
        "UpdateConversation": conversation_command,
        "ArchiveConversation": conversation_command,
        "SpawnSidebar": context_command,
        "PauseContext": context_command,
        "ResumeContext": context_command,
        "MergeContext": context_command,
        "ArchiveContext": context_command,
        "RestoreContext": context_command,
        "ReparentContext": context_command,
        "GetContext": get_context,
        "GetTree": get_tree,
        "Focus": context_command,
        "GetStartupState": get_startup_state,
        "AppendBlock": append_block,
        "AppendBlocks": append_blocks,
        "RetractBlock": retract_block,
        "GetBlock": get_block,
        "ListBlocks": list_blocks,
        "GetHistory": get_history,
        "SearchBlocks": search_blocks,
        "GetConversationStats": get_conversation_stats,
        "SetTags": context_command,
        "AddCrossRef": crossref_command,
        "RevokeCrossRef": crossref_command,
        "ListCrossRefs": list_crossrefs,
        "Watch": watch,
        "ExportConversation": export_conversation,
        "ImportConversation": import_conversation,
    }
    return handlers


# --- io.timelined.Admin ------------------------------------------------------------------------


def _builtins(value: Any) -> dict[str, Any] | None:
    """A part's answer (Struct, dataclass, dict, …) as a JSON object for an `object` field."""
    if value is None:
        return None
    plain = msgspec.to_builtins(value)
    if isinstance(plain, dict):
        return plain
    return {"value": plain}


def _watch_reply(batch: WatchBatch) -> WatchReply:
    return WatchReply([msgspec.Raw(line) for line in batch.lines], batch.live)


def _read_log_page(
    log: LogSource, after_seq: int, upto_seq: int, reply_bytes: int
) -> tuple[list[msgspec.Raw], int, list[int] | None]:
    """The lines after `after_seq` up to `upto_seq`, fewer if the reply would pass
    `reply_bytes` (never none); the seq of the last one returned; the seqs among them that
    start a segment (None: the log has no segments)."""
    # Each line is a JSON object already: embedded as raw bytes, the reply carries the log's
    # bytes exactly, so a client can recompute every hash from what it received.
    lines: list[msgspec.Raw] = []
    last = after_seq
    budget = ReplyBudget(reply_bytes)
    for seq, line in log.lines(after_seq, upto_seq):
        if not budget.add(len(line)):  # the newline's byte pays for the comma
            break  # the generator is closed (its file with it) as it goes out of scope
        lines.append(msgspec.Raw(line[:-1]))
        last = seq
    # At most one seq per line returned: bounded by the page.
    return lines, last, log.segment_starts(after_seq, last)


def _uptime(started_at: str) -> float:
    try:
        return round((datetime.now(UTC) - parse_ts(started_at)).total_seconds(), 3)
    except ValueError:
        return 0.0


def status_of(app: App, figures: LogFigures | None = None) -> Status:
    """The daemon's status, as GetStatus answers it (`figures`: the log's, read off the loop)."""
    engine = app.engine
    boot = app.boot
    verifier = app.verifier
    verify = _builtins(verifier.status()) if verifier is not None else None
    server = app.server.stats()
    stats = engine.stats
    return Status(
        version=__version__,
        pid=os.getpid(),
        started_at=app.started_at,
        uptime_s=_uptime(app.started_at),
        state_dir=str(app.config.state_dir),
        socket_path=str(app.config.socket_path),
        last_seq=engine.last_seq,
        head_hash=engine.last_hash,
        boot=BootStatus(
            verdict=boot.verdict,
            report_id=boot.id,
            recovery_report=boot.recovery_report,
            started_at=boot.started_at,
            fast_path=boot.fast_path,
            events_rolled_forward=boot.events_rolled_forward,
        ),
        verify=verify if verify is not None else {"state": "never"},
        connections=ConnectionStats(
            open=server.connections_open,
            total=server.connections_total,
            rejected=server.connections_rejected,
            streams=server.streams_open,
            calls=server.calls_total,
            errors=server.errors_total,
            by_class=server.connections_by_tier,
            rejected_by_reason=server.rejected_by_reason,
        ),
        writer=WriterStats(
            commands=stats.commands,
            refused=stats.refused,
            events=stats.events,
            batches=stats.batches,
            queue_depth=engine.queue_depth,
        ),
        read_only=engine.read_only.message if engine.read_only is not None else None,
        fatal=engine.fatal.message if engine.fatal is not None else None,
        log=None
        if figures is None
        else LogStatus(
            backend=figures.backend,
            segment_bytes=app.config.log.segment_bytes,
            stored_bytes=figures.stored_bytes,
            segments=figures.segments,
        ),
    )


def admin_handlers(app: App) -> dict[str, Handler]:
    """The handlers of io.timelined.Admin, by method name."""

    def verifier() -> Any:
        found = app.verifier
        if found is None:
            raise FeatureUnavailable("verifier", "the background verifier is not running")
        return found

    async def get_status(p: EmptyParams, ctx: CallContext) -> StatusReply:
        figures = await anyio.to_thread.run_sync(app.log.figures)
        return StatusReply(status_of(app, figures))

    async def read_log(p: ReadLogParams, ctx: CallContext) -> ReadLogReply:
        head = app.engine.readable_seq  # committed (on PostgreSQL: other daemons' too)
        if p.after_seq >= head:
            return ReadLogReply(events=[])
        upto = min(head, p.after_seq + p.limit)
        events, last, segments = await anyio.to_thread.run_sync(
            _read_log_page, app.log, p.after_seq, upto, app.config.limits.max_message_bytes
        )
        return ReadLogReply(events=events, next=last if last < head else None, segments=segments)

    async def get_recovery_report(
        p: GetRecoveryReportParams, ctx: CallContext
    ) -> RecoveryReportReply:
        report = await anyio.to_thread.run_sync(load_report, app.config.reports_dir, p.id)
        return RecoveryReportReply(report)

    async def list_reports_(p: ListReportsParams, ctx: CallContext) -> ReportsReply:
        infos = await anyio.to_thread.run_sync(
            report_infos, app.config.reports_dir, p.limit, p.kind
        )
        return ReportsReply(infos)

    async def verify(p: VerifyParams, ctx: CallContext) -> VerifyReply:
        v = verifier()
        result = await v.verify(p.wait)
        return VerifyReply(result=_builtins(result), status=_builtins(v.status()))

    async def get_verify_report(p: EmptyParams, ctx: CallContext) -> VerifyReportReply:
        return VerifyReportReply(_builtins(verifier().latest()))

    async def repair(p: EmptyParams, ctx: CallContext) -> RepairReply:
        return RepairReply(_builtins(await verifier().repair()))

    async def reload(p: EmptyParams, ctx: CallContext) -> ReloadReply:
        if app.reloader is None:
            raise FeatureUnavailable("reload", "this daemon was started without a config reloader")
        return await app.reloader.reload()

    async def get_metrics(p: EmptyParams, ctx: CallContext) -> MetricsReply:
        return MetricsReply(render_metrics(app))

    return {
        "GetMetrics": get_metrics,
        "GetStatus": get_status,
        "ReadLog": read_log,
        "GetRecoveryReport": get_recovery_report,
        "ListReports": list_reports_,
        "Verify": verify,
        "GetVerifyReport": get_verify_report,
        "Repair": repair,
        "Reload": reload,
        **transparency_handlers(app),
    }


def transparency_handlers(app: App) -> dict[str, Handler]:
    """GetCheckpoint, GetCheckpointKey, GetInclusionProof, GetConsistencyProof (issue 19)."""

    def service() -> Transparency:
        found = app.transparency
        if found is None:
            raise FeatureUnavailable("transparency", "the Merkle tree is not kept by this daemon")
        return found

    def proof(parameter: str, make: Callable[[], list[str]]) -> list[str]:
        try:
            return make()
        except ProofError as exc:
            raise InvalidArgument(parameter, str(exc)) from None

    async def get_checkpoint(p: EmptyParams, ctx: CallContext) -> CheckpointReply:
        await app.engine.delivered()  # the tree holds everything acknowledged before the call
        return CheckpointReply(await service().checkpoint())

    async def get_checkpoint_key(p: EmptyParams, ctx: CallContext) -> CheckpointKeyReply:
        return CheckpointKeyReply(await service().verifier_key())

    async def get_inclusion_proof(
        p: GetInclusionProofParams, ctx: CallContext
    ) -> InclusionProofReply:
        found = service()
        await app.engine.delivered()
        size = found.tree.size if p.tree_size is None else p.tree_size
        hashes = proof("seq", lambda: found.inclusion(p.seq - 1, size))
        return InclusionProofReply(leaf_index=p.seq - 1, tree_size=size, hashes=hashes)

    async def get_consistency_proof(
        p: GetConsistencyProofParams, ctx: CallContext
    ) -> ConsistencyProofReply:
        found = service()
        await app.engine.delivered()
        size = found.tree.size if p.new_size is None else p.new_size
        return ConsistencyProofReply(proof("old_size", lambda: found.consistency(p.old_size, size)))

    return {
        "GetCheckpoint": get_checkpoint,
        "GetCheckpointKey": get_checkpoint_key,
        "GetInclusionProof": get_inclusion_proof,
        "GetConsistencyProof": get_consistency_proof,
    }
