"""The client library: a typed method per Varlink method of timelined, async and blocking.

    from timelined.client import Client

    with Client() as tl:                       # $TIMELINED_SOCKET, else the config's socket
        conv = tl.create_conversation("Trip planning")
        tl.append_block(conv.root_context_id, "user", "Where should we go?")
        side = tl.spawn_sidebar(conv.root_context_id, "look up trains", inherit_last=1)
        for item in tl.get_history(side.id):
            print(item.source_context_id, item.block.role, item.block.content)

`AsyncClient` has the same methods as coroutines (anyio: asyncio or trio). Both keep a small
pool of connections, so consecutive calls reuse one and concurrent callers (tasks, threads) each
get their own; both are safe to share.

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

import math
import os
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator, Mapping
from pathlib import Path
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
from timelined.auditlog.record import RecordError, check_frame
from timelined.config import find_config_file, load_config
from timelined.errors import (
    DaemonUnavailable,
    InvalidArgument,
    ProtocolError,
    TimelinedError,
    all_error_classes,
)
from timelined.events import SubBlock
from timelined.exchange import ExportDocument, ExportPart, join_parts
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
from timelined.varlink import (
    AsyncVarlinkClient,
    Connection,
    VarlinkClient,
    VarlinkErrorReply,
)
from timelined.varlink.errors import ConnectionFailed, ProtocolViolation, VarlinkError
from timelined.varlink.service import GetInfoReply, GetInterfaceDescriptionReply
from timelined.writer.rules import AppendResult

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
    "socket_path",
]

T = TypeVar("T")

TIMELINE = "io.timelined.Timeline."
ADMIN = "io.timelined.Admin."
SERVICE = "org.varlink.service."
SOCKET_ENV = "TIMELINED_SOCKET"


# --- errors ------------------------------------------------------------------------------------


class VarlinkServiceError(TimelinedError):
    """An error of the standard interface `org.varlink.service`."""

    name = "VarlinkServiceError"

    @property
    def varlink_name(self) -> str:
        return f"{SERVICE}{self.name}"


class InvalidParameter(VarlinkServiceError):
    """A parameter of the wrong type, missing, or unknown; `parameter` names it."""

    name = "InvalidParameter"

    def __init__(self, parameter: str, message: str | None = None) -> None:
        super().__init__(message or f"invalid parameter {parameter!r}", parameter=parameter)
        self.parameter = parameter


class MethodNotFound(VarlinkServiceError):
    name = "MethodNotFound"

    def __init__(self, method: str) -> None:
        super().__init__(f"no method {method!r}", method=method)
        self.method = method


class MethodNotImplemented(VarlinkServiceError):
    name = "MethodNotImplemented"

    def __init__(self, method: str) -> None:
        super().__init__(f"method {method!r} is declared but not implemented", method=method)
        self.method = method


class InterfaceNotFound(VarlinkServiceError):
    name = "InterfaceNotFound"

    def __init__(self, interface: str) -> None:
        super().__init__(f"no interface {interface!r}", interface=interface)
        self.interface = interface


class ExpectedMore(VarlinkServiceError):
    """A method that streams its answer (ExportConversation) was called without `more`."""

    name = "ExpectedMore"

    def __init__(self) -> None:
        super().__init__("this method streams its answer: call it with more (stream())")


class RemoteError(TimelinedError):
    """A named error this library has no class for: `error` is its full Varlink name."""

    name = "RemoteError"

    def __init__(self, error: str, parameters: Mapping[str, Any]) -> None:
        params = {k: v for k, v in parameters.items() if k != "message"}
        super().__init__(str(parameters.get("message") or error), **params)
        self.error = error

    @property
    def varlink_name(self) -> str:
        return self.error


_RESERVED = frozenset({"message", "params", "error"})
_classes: dict[str, type[TimelinedError]] = {}


def _error_classes() -> dict[str, type[TimelinedError]]:
    if not _classes:
        for cls in all_error_classes():
            if cls is RemoteError or cls is VarlinkServiceError:
                continue
            prefix = SERVICE if issubclass(cls, VarlinkServiceError) else "io.timelined."
            _classes.setdefault(prefix + cls.name, cls)
    return _classes


def _local_error(error: VarlinkError) -> Exception:
    """The Varlink library's own failures as timelined's; error replies stay as they are
    (`error_from_reply` names them)."""
    if isinstance(error, ConnectionFailed):
        return DaemonUnavailable(error.path, error.reason)
    if isinstance(error, ProtocolViolation):
        return ProtocolError(error.reason)
    return error


def error_from_reply(reply: VarlinkErrorReply) -> TimelinedError:
    """The named exception for a Varlink error reply, its parameters restored."""
    cls = _error_classes().get(reply.name)
    params = reply.parameters
    if cls is None:
        return RemoteError(reply.name, params)
    # The classes' constructors take what the daemon knew; the reply carries what it said. Set
    # the parameters as they arrived (the message included) rather than guessing arguments.
    exc = cls.__new__(cls)
    message = params.get("message")
    if not isinstance(message, str) or not message:
        message = _fallback_message(cls, params)
    elif cls is InvalidParameter and "parameter" in params:
        message = f"invalid parameter {params['parameter']!r}: {message}"
    TimelinedError.__init__(exc, message, **{k: v for k, v in params.items() if k != "message"})
    for key, value in params.items():
        if key not in _RESERVED and key.isidentifier() and not hasattr(cls, key):
            setattr(exc, key, value)
    return exc


def _fallback_message(cls: type[TimelinedError], params: Mapping[str, Any]) -> str:
    details = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"{cls.name}: {details}" if details else cls.name


# --- where the daemon is -----------------------------------------------------------------------


# Where the packaged systemd units put the socket (RuntimeDirectory=timelined).
SYSTEMD_SOCKET = Path("/run/timelined/timelined.sock")


def socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The daemon's socket: `explicit`, else $TIMELINED_SOCKET, else the socket_path of the
    config.toml found as the daemon finds it ($TIMELINED_CONFIG, …, ./config.toml); with no
    config file, the systemd service's socket if it exists, else the default (./var)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    if find_config_file() is None and _service_socket_there():
        return SYSTEMD_SOCKET
    return load_config().socket_path


def _service_socket_there() -> bool:
    try:
        return SYSTEMD_SOCKET.is_socket()
    except PermissionError:  # /run/timelined is 0750: it is there, this user may not use it
        return True  # connecting then says so (timelinectl exits 77)
    except OSError:
        return False


# Errors after which the server hangs up: the pooled connection must not be reused (the next
# call on it could meet the hang-up instead of an answer).
_HANGS_UP = frozenset(
    {
        "io.timelined.PermissionDenied",
        "io.timelined.ProtocolError",
        "io.timelined.LimitExceeded",
        "io.timelined.ShuttingDown",
    }
)


def _params(**kwargs: Any) -> dict[str, Any]:
    """Call parameters without the ones left out (None), as optional Varlink fields are.

    A NaN or an infinity is refused here: JSON cannot carry one, and an encoder would silently
    send `null`, which the daemon takes as "left out".
    """
    _check_finite(kwargs)
    return {k: v for k, v in kwargs.items() if v is not None}


def _check_finite(params: Mapping[str, Any]) -> None:
    for name, value in params.items():
        _finite(name, value)


def _finite(where: str, value: Any) -> None:
    """Down into metadata and sub-blocks too: a NaN there would become `null` as well."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(where, f"must be a finite number, not {value}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _finite(f"{where}.{key}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _finite(f"{where}[{index}]", item)


_LOG_EVENT = msgspec.json.Decoder(LogEvent)


def log_event(raw: msgspec.Raw | bytes) -> LogEvent:
    """One event of a Watch reply (a log line), its hash checked by the log-format rule."""
    content = bytes(raw)
    try:
        check_frame(content)
    except RecordError as exc:
        raise ProtocolError(f"a watched event is not intact: {exc.kind}") from None
    return _LOG_EVENT.decode(content)


def _document(document: ExportDocument | Iterable[ExportPart]) -> ExportDocument:
    return document if isinstance(document, ExportDocument) else join_parts(list(document))


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


# --- async -------------------------------------------------------------------------------------


class AsyncClient:
    """timelined over Varlink, for anyio (asyncio or trio) programs."""

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, max_idle: int = 8) -> None:
        self.socket_path = socket_path(socket)
        self._max_idle = max_idle
        self._varlink = AsyncVarlinkClient(
            self.socket_path, max_idle=max_idle, map_error=_local_error
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
        if exc.name in _HANGS_UP:
            old = self._varlink
            self._varlink = AsyncVarlinkClient(
                self.socket_path, max_idle=self._max_idle, map_error=_local_error
            )
            await old.aclose()  # idle connections now; busy ones as their calls end

    async def call(self, method: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Any method by its full name; the reply as its typed Struct (declared methods) or
        as a dict (org.varlink.service and methods this library does not declare)."""
        declared = METHODS.get(method)
        _check_finite(parameters or {})
        if declared is not None:
            return await self._call(method, parameters or {}, declared.reply)
        try:
            return await self._varlink.call(method, parameters)
        except VarlinkErrorReply as exc:
            await self._after_error(exc)
            raise error_from_reply(exc) from None

    async def _replies(self, method: str, params: Any, reply: type[T]) -> AsyncGenerator[T, None]:
        stream = cast(AsyncGenerator[T, None], self._varlink.stream_typed(method, params, reply))
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
        return self._replies(method, parameters or {}, tp)

    async def _open_stream(
        self, method: str, params: Any, reply: type[T]
    ) -> tuple[T, AsyncGenerator[T, None]]:
        """The first reply (a refusal is raised here) and the stream of the rest."""
        replies = self._replies(method, params, reply)
        try:
            first = await replies.__anext__()
        except StopAsyncIteration:
            raise ProtocolError(f"{method} sent no reply") from None
        except BaseException:
            await replies.aclose()
            raise
        return first, replies

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
        params = _params(name=name, metadata=metadata)
        reply = await self._call(TIMELINE + "CreateConversation", params, ConversationReply)
        return reply.conversation

    async def list_conversations(
        self, include_archived: bool = False, limit: int | None = None, after: int | None = None
    ) -> ConversationsReply:
        params = _params(include_archived=include_archived or None, limit=limit, after=after)
        return await self._call(TIMELINE + "ListConversations", params, ConversationsReply)

    async def get_conversation(self, id: str) -> Conversation:
        reply = await self._call(TIMELINE + "GetConversation", {"id": id}, ConversationReply)
        return reply.conversation

    async def update_conversation(
        self, id: str, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Conversation:
        params = _params(id=id, name=name, metadata=metadata)
        reply = await self._call(TIMELINE + "UpdateConversation", params, ConversationReply)
        return reply.conversation

    async def archive_conversation(self, id: str, reason: str | None = None) -> Conversation:
        params = _params(id=id, reason=reason)
        reply = await self._call(TIMELINE + "ArchiveConversation", params, ConversationReply)
        return reply.conversation

    async def get_conversation_stats(self, id: str) -> ConversationStats:
        reply = await self._call(TIMELINE + "GetConversationStats", {"id": id}, StatsReply)
        return reply.stats

    async def export_conversation(self, id: str) -> AsyncGenerator[ExportPart, None]:
        """The conversation as export parts (header, events, blocks, end), streamed: the
        coroutine returns once the header is in; iterate the result for every part."""
        first, rest = await self._open_stream(
            TIMELINE + "ExportConversation", {"id": id}, ExportPart
        )
        return _then(first, rest)

    async def import_conversation(
        self, document: ExportDocument | Iterable[ExportPart], mode: str | None = None
    ) -> Conversation:
        """Import an export (a document, or its parts); mode "new" (default) or "keep"."""
        params = _params(document=_document(document), mode=mode)
        reply = await self._call(TIMELINE + "ImportConversation", params, ConversationReply)
        return reply.conversation

    async def watch(
        self, conversation_id: str | None = None, after_seq: int | None = None
    ) -> AsyncGenerator[LogEvent, None]:
        """Events past `after_seq` (from the log), then every new one as it commits.

        Returns once the watch is subscribed; iterate the result (`async for`). A watcher that
        falls too far behind gets SlowConsumer: watch again with `after_seq` = the last seq it
        received. Close the iterator (`aclose`, or `contextlib.aclosing`) to stop early.
        """
        params = _params(conversation_id=conversation_id, after_seq=after_seq)
        first, rest = await self._open_stream(TIMELINE + "Watch", params, WatchReply)
        return _watch_events(first, rest)

    # contexts

    async def _context(self, method: str, params: dict[str, Any]) -> Context:
        reply = await self._call(TIMELINE + method, params, ContextReply)
        return reply.context

    async def spawn_sidebar(
        self, parent_id: str, reason: str, inherit_last: int | None = None
    ) -> Context:
        params = _params(parent_id=parent_id, reason=reason, inherit_last=inherit_last)
        return await self._context("SpawnSidebar", params)

    async def pause_context(self, id: str) -> Context:
        return await self._context("PauseContext", {"id": id})

    async def resume_context(self, id: str) -> Context:
        return await self._context("ResumeContext", {"id": id})

    async def merge_context(self, id: str, summary: str | None = None) -> Context:
        return await self._context("MergeContext", _params(id=id, summary=summary))

    async def archive_context(self, id: str, reason: str | None = None) -> Context:
        return await self._context("ArchiveContext", _params(id=id, reason=reason))

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

    async def get_tree(self, conversation_id: str) -> list[Context]:
        params = {"conversation_id": conversation_id}
        reply = await self._call(TIMELINE + "GetTree", params, ContextsReply)
        return reply.contexts

    async def get_startup_state(self) -> StartupState:
        reply = await self._call(TIMELINE + "GetStartupState", {}, StartupStateReply)
        return reply.state

    async def add_crossref(
        self, from_id: str, to_id: str, kind: str, note: str | None = None
    ) -> CrossRef:
        params = _params(from_id=from_id, to_id=to_id, kind=kind, note=note)
        reply = await self._call(TIMELINE + "AddCrossRef", params, CrossRefReply)
        return reply.crossref

    async def revoke_crossref(self, id: str) -> CrossRef:
        reply = await self._call(TIMELINE + "RevokeCrossRef", {"id": id}, CrossRefReply)
        return reply.crossref

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
                _params(timestamp=timestamp, time_taken=time_taken, tokens_input=tokens_input)
            )
        if tokens_output is not None or metadata is not None or sub_blocks is not None:
            params.update(
                _params(tokens_output=tokens_output, metadata=metadata, sub_blocks=sub_blocks)
            )
        return await self._call(TIMELINE + "AppendBlock", params, AppendResult)

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
    ) -> BlocksReply:
        params = _params(
            context_id=context_id,
            after=after,
            before=before,
            limit=limit,
            roles=roles,
            since=since,
            until=until,
        )
        return await self._call(TIMELINE + "ListBlocks", params, BlocksReply)

    async def get_history(self, context_id: str, limit: int | None = None) -> list[HistoryBlock]:
        params = _params(context_id=context_id, limit=limit)
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
        params = _params(
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
        params = _params(after_seq=after_seq, limit=limit)
        return await self._call(ADMIN + "ReadLog", params, ReadLogReply)

    async def get_recovery_report(self, id: str | None = None) -> Report | None:
        reply = await self._call(ADMIN + "GetRecoveryReport", _params(id=id), RecoveryReportReply)
        return reply.report

    async def list_reports(
        self, limit: int | None = None, kind: str | None = None
    ) -> list[ReportInfo]:
        reply = await self._call(
            ADMIN + "ListReports", _params(limit=limit, kind=kind), ReportsReply
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


# --- blocking ----------------------------------------------------------------------------------


class Client:
    """timelined over Varlink, blocking; safe to share between threads."""

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
        self._varlink = VarlinkClient(
            self.socket_path, timeout=timeout, max_idle=max_idle, map_error=_local_error
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._varlink.close()

    def _call(self, method: str, params: Any, reply: type[T]) -> T:
        try:
            return self._varlink.call_typed(method, params, reply)
        except VarlinkErrorReply as exc:
            self._after_error(exc)
            raise error_from_reply(exc) from None

    def _after_error(self, exc: VarlinkErrorReply) -> None:
        if exc.name in _HANGS_UP:
            old = self._varlink
            self._varlink = VarlinkClient(
                self.socket_path,
                timeout=self._timeout,
                max_idle=self._max_idle,
                map_error=_local_error,
            )
            old.close()  # idle connections now; busy ones as their calls end

    def call(self, method: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Any method by its full name; the reply as its typed Struct (declared methods) or
        as a dict (org.varlink.service and methods this library does not declare)."""
        declared = METHODS.get(method)
        _check_finite(parameters or {})
        if declared is not None:
            return self._call(method, parameters or {}, declared.reply)
        try:
            return self._varlink.call(method, parameters)
        except VarlinkErrorReply as exc:
            self._after_error(exc)
            raise error_from_reply(exc) from None

    def stream(
        self,
        method: str,
        parameters: Mapping[str, Any] | None = None,
        reply_type: type[Any] | None = None,
    ) -> Iterator[Any]:
        """Any streaming method by its full name (a `more` call): its replies, typed as the
        declared reply (else `reply_type`, else dicts; `msgspec.Raw` gives the bytes)."""
        declared = METHODS.get(method)
        tp = reply_type or (declared.reply if declared is not None else dict[str, Any])
        return self._replies(self._varlink.stream_typed(method, parameters or {}, tp))

    def _replies(self, replies: Iterator[T]) -> Generator[T, None, None]:
        try:
            yield from replies
        except VarlinkErrorReply as exc:
            self._after_error(exc)
            raise error_from_reply(exc) from None

    @staticmethod
    def _open_stream(replies: Generator[T, None, None], method: str) -> T:
        try:
            return next(replies)
        except StopIteration:
            raise ProtocolError(f"{method} sent no reply") from None
        except BaseException:
            replies.close()
            raise

    @staticmethod
    def _then(first: T, rest: Generator[T, None, None]) -> Generator[T, None, None]:
        try:
            yield first
            yield from rest
        finally:
            rest.close()

    # org.varlink.service

    def get_info(self) -> GetInfoReply:
        return self._call(SERVICE + "GetInfo", {}, GetInfoReply)

    def get_interface_description(self, interface: str) -> str:
        reply = self._call(
            SERVICE + "GetInterfaceDescription",
            {"interface": interface},
            GetInterfaceDescriptionReply,
        )
        return reply.description

    # conversations

    def create_conversation(
        self, name: str, metadata: Mapping[str, Any] | None = None
    ) -> Conversation:
        params = _params(name=name, metadata=metadata)
        return self._call(TIMELINE + "CreateConversation", params, ConversationReply).conversation

    def list_conversations(
        self, include_archived: bool = False, limit: int | None = None, after: int | None = None
    ) -> ConversationsReply:
        params = _params(include_archived=include_archived or None, limit=limit, after=after)
        return self._call(TIMELINE + "ListConversations", params, ConversationsReply)

    def get_conversation(self, id: str) -> Conversation:
        return self._call(TIMELINE + "GetConversation", {"id": id}, ConversationReply).conversation

    def update_conversation(
        self, id: str, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Conversation:
        params = _params(id=id, name=name, metadata=metadata)
        return self._call(TIMELINE + "UpdateConversation", params, ConversationReply).conversation

    def archive_conversation(self, id: str, reason: str | None = None) -> Conversation:
        params = _params(id=id, reason=reason)
        return self._call(TIMELINE + "ArchiveConversation", params, ConversationReply).conversation

    def get_conversation_stats(self, id: str) -> ConversationStats:
        return self._call(TIMELINE + "GetConversationStats", {"id": id}, StatsReply).stats

    def export_conversation(self, id: str) -> Generator[ExportPart, None, None]:
        """The conversation as export parts (header, events, blocks, end), streamed; returns
        once the header is in (a refusal is raised here)."""
        method = TIMELINE + "ExportConversation"
        rest = self._replies(self._varlink.stream_typed(method, {"id": id}, ExportPart))
        return self._then(self._open_stream(rest, method), rest)

    def import_conversation(
        self, document: ExportDocument | Iterable[ExportPart], mode: str | None = None
    ) -> Conversation:
        """Import an export (a document, or its parts); mode "new" (default) or "keep"."""
        params = _params(document=_document(document), mode=mode)
        return self._call(TIMELINE + "ImportConversation", params, ConversationReply).conversation

    def watch(
        self, conversation_id: str | None = None, after_seq: int | None = None
    ) -> Generator[LogEvent, None, None]:
        """Events past `after_seq` (from the log), then every new one as it commits.

        Returns once the watch is subscribed. The watch has a connection of its own without
        the client's timeout (it may be idle for long); closing the iterator closes it. A
        watcher that falls too far behind gets SlowConsumer: watch again with `after_seq` =
        the last seq it received.
        """
        params = _params(conversation_id=conversation_id, after_seq=after_seq)
        method = TIMELINE + "Watch"
        conn = Connection.open(self.socket_path, timeout=None, map_error=_local_error)
        try:
            rest = self._replies(conn.stream_typed(method, params, WatchReply))
            first = self._open_stream(rest, method)
        except BaseException:
            conn.close()
            raise
        return self._watch_events(conn, first, rest)

    @staticmethod
    def _watch_events(
        conn: Connection, first: WatchReply, rest: Generator[WatchReply, None, None]
    ) -> Generator[LogEvent, None, None]:
        try:
            for raw in first.events:
                yield log_event(raw)
            for reply in rest:
                for raw in reply.events:
                    yield log_event(raw)
        finally:
            rest.close()
            conn.close()

    # contexts

    def _context(self, method: str, params: dict[str, Any]) -> Context:
        return self._call(TIMELINE + method, params, ContextReply).context

    def spawn_sidebar(
        self, parent_id: str, reason: str, inherit_last: int | None = None
    ) -> Context:
        params = _params(parent_id=parent_id, reason=reason, inherit_last=inherit_last)
        return self._context("SpawnSidebar", params)

    def pause_context(self, id: str) -> Context:
        return self._context("PauseContext", {"id": id})

    def resume_context(self, id: str) -> Context:
        return self._context("ResumeContext", {"id": id})

    def merge_context(self, id: str, summary: str | None = None) -> Context:
        return self._context("MergeContext", _params(id=id, summary=summary))

    def archive_context(self, id: str, reason: str | None = None) -> Context:
        return self._context("ArchiveContext", _params(id=id, reason=reason))

    def restore_context(self, id: str) -> Context:
        return self._context("RestoreContext", {"id": id})

    def reparent_context(self, id: str, new_parent_id: str) -> Context:
        return self._context("ReparentContext", {"id": id, "new_parent_id": new_parent_id})

    def get_context(self, id: str) -> Context:
        return self._context("GetContext", {"id": id})

    def focus(self, context_id: str) -> Context:
        return self._context("Focus", {"context_id": context_id})

    def set_tags(self, context_id: str, tags: list[str]) -> Context:
        return self._context("SetTags", {"context_id": context_id, "tags": list(tags)})

    def get_tree(self, conversation_id: str) -> list[Context]:
        params = {"conversation_id": conversation_id}
        return self._call(TIMELINE + "GetTree", params, ContextsReply).contexts

    def get_startup_state(self) -> StartupState:
        return self._call(TIMELINE + "GetStartupState", {}, StartupStateReply).state

    def add_crossref(
        self, from_id: str, to_id: str, kind: str, note: str | None = None
    ) -> CrossRef:
        params = _params(from_id=from_id, to_id=to_id, kind=kind, note=note)
        return self._call(TIMELINE + "AddCrossRef", params, CrossRefReply).crossref

    def revoke_crossref(self, id: str) -> CrossRef:
        return self._call(TIMELINE + "RevokeCrossRef", {"id": id}, CrossRefReply).crossref

    # blocks

    def append_block(
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
                _params(timestamp=timestamp, time_taken=time_taken, tokens_input=tokens_input)
            )
        if tokens_output is not None or metadata is not None or sub_blocks is not None:
            params.update(
                _params(tokens_output=tokens_output, metadata=metadata, sub_blocks=sub_blocks)
            )
        return self._call(TIMELINE + "AppendBlock", params, AppendResult)

    def get_block(self, id: str) -> Block:
        return self._call(TIMELINE + "GetBlock", {"id": id}, BlockReply).block

    def list_blocks(
        self,
        context_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        roles: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> BlocksReply:
        params = _params(
            context_id=context_id,
            after=after,
            before=before,
            limit=limit,
            roles=roles,
            since=since,
            until=until,
        )
        return self._call(TIMELINE + "ListBlocks", params, BlocksReply)

    def get_history(self, context_id: str, limit: int | None = None) -> list[HistoryBlock]:
        params = _params(context_id=context_id, limit=limit)
        return self._call(TIMELINE + "GetHistory", params, HistoryReply).blocks

    def search_blocks(
        self,
        query: str,
        *,
        conversation_id: str | None = None,
        context_id: str | None = None,
        role: str | None = None,
        limit: int | None = None,
    ) -> list[SearchHit]:
        params = _params(
            query=query,
            conversation_id=conversation_id,
            context_id=context_id,
            role=role,
            limit=limit,
        )
        return self._call(TIMELINE + "SearchBlocks", params, SearchReply).hits

    # admin

    def get_status(self) -> Status:
        return self._call(ADMIN + "GetStatus", {}, StatusReply).status

    def read_log(self, after_seq: int = 0, limit: int | None = None) -> ReadLogReply:
        """Raw log events: `events` are the log's lines byte for byte (`msgspec.Raw`; decode
        with `msgspec.json.decode`, or hash `bytes(raw)` to check the chain)."""
        params = _params(after_seq=after_seq, limit=limit)
        return self._call(ADMIN + "ReadLog", params, ReadLogReply)

    def get_recovery_report(self, id: str | None = None) -> Report | None:
        return self._call(ADMIN + "GetRecoveryReport", _params(id=id), RecoveryReportReply).report

    def list_reports(self, limit: int | None = None, kind: str | None = None) -> list[ReportInfo]:
        params = _params(limit=limit, kind=kind)
        return self._call(ADMIN + "ListReports", params, ReportsReply).reports

    def verify(self, wait: bool = False) -> VerifyReply:
        return self._call(ADMIN + "Verify", {"wait": wait}, VerifyReply)

    def get_verify_report(self) -> dict[str, Any] | None:
        return self._call(ADMIN + "GetVerifyReport", {}, VerifyReportReply).report

    def repair(self) -> dict[str, Any] | None:
        return self._call(ADMIN + "Repair", {}, RepairReply).result

    def reload(self) -> ReloadReply:
        return self._call(ADMIN + "Reload", {}, ReloadReply)

    def get_metrics(self) -> str:
        """The daemon's metrics in the Prometheus text format."""
        return self._call(ADMIN + "GetMetrics", {}, MetricsReply).text


def to_json(value: Any) -> bytes:
    """A reply (or any Struct) as JSON bytes, as it travels on the wire."""
    return msgspec.json.encode(value)
