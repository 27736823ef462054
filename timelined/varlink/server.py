"""An anyio Varlink server on a Unix socket: framing, dispatch, limits, streams, shutdown.

Each connection is one task (on asyncio, only while it needs one: see below). It reads whatever
frames have arrived and dispatches them all before it waits: a `@deferring` handler's call
(deferred.py) is queued, not awaited, so the calls of one read are in flight together; a call to any
other handler first waits for the deferred ones before it (read-your-writes). The replies go out in
the order of the calls, those of one read in one write, and the task awaits its own writes, so a
slow reader only slows itself. Concurrency comes from many connections, and from pipelining within
one, as the protocol intends. A call costs one decode of the envelope, one typed decode of the
parameters straight into the method's Struct, the handler, and one encode of the reply into the
output buffer: no task, no regex and no intermediate dict per call.

On asyncio a connection has no task between calls (`_detach`): a read callback registered once
takes each read, dispatches it, and when its calls were all deferred (a run of writes) or
answered at once, the last Deferred's callback writes the replies. The calls that arrive while
such a batch is in flight are kept (up to one read's worth, then reading pauses) and dispatched
when it is written. Anything that must wait (a handler that is awaited, a stream, an error that
closes the connection, a reply the socket does not take whole, the end of the input) hands the
connection to a task running the code below, which gives it back once idle. Measured: the loop's
per-append CPU at 64 connections falls by the task's wake-up and the add_reader/remove_reader of
every wait (docs/performance.md).

Errors the server sends on its own, and when it closes the connection, are listed in
`protocol.py`. The authorization hook runs before every call; when it raises, the error is
sent and the connection is closed.

Streaming (`more: true`): a handler that is an async generator (or returns an async iterator)
yields replies; each is sent at once with `continues: true`, and the one wrapped in `Final` is
sent last without it. Each step (pulling and sending one reply) holds a frame of the uid's share
of `replies`, until the stream yields a reply wrapped in `Live`: from then on it waits for events
and holds none. An exception from the iterator ends the stream with that error. While a
stream runs, the connection is watched for a hang-up, so an idle `Watch` whose client went away
is torn down at once rather than at its next event. Without `more`, a streaming handler's first
reply is the answer (a handler whose first reply means nothing alone raises ExpectedMore).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import itertools
import logging
import os
import select
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import anyio
import msgspec
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus

from timelined.varlink.admission import ADMISSION_REFUSED, EVERYONE, Admission, Slots
from timelined.varlink.budget import ByteBudget
from timelined.varlink.deferred import DEFERRING, REPLY_LIKE_CALL, Deferred
from timelined.varlink.errors import (
    ErrorMapper,
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ServerStopping,
    VarlinkError,
)
from timelined.varlink.framing import (
    CALL_DECODER,
    DEFAULT_RECEIVE_SIZE,
    CallMessage,
    FrameError,
    FrameReader,
    FrameTooLarge,
    IncompleteFrame,
    ReceiveBuffer,
    decode_call,
    json_problem,
    send_all,
    send_at_once,
    send_rest,
)
from timelined.varlink.interface import (
    Interface,
    has_optional_fields,
    normalize_optional,
)
from timelined.varlink.protocol import (
    INTERFACE_NOT_FOUND,
    INVALID_PARAMETER,
    METHOD_NOT_FOUND,
    METHOD_NOT_IMPLEMENTED,
    VarlinkErrorReply,
    append_reply,
    encode_error,
    invalid_parameter,
)
from timelined.varlink.service import (
    SERVICE,
    GetInfoParams,
    GetInfoReply,
    GetInterfaceDescriptionParams,
    GetInterfaceDescriptionReply,
    ServiceInfo,
)

__all__ = [
    "Admission",
    "Admitter",
    "Authorizer",
    "CallContext",
    "Final",
    "Handler",
    "Live",
    "PeerCredentials",
    "ServerLimits",
    "ServerStats",
    "VarlinkServer",
    "bind_unix_socket",
    "listen_unix",
    "listener_from_socket",
    "peer_credentials",
]

log = logging.getLogger("timelined.varlink")

R = TypeVar("R")

_FLUSH_BYTES = 64 * 1024  # a pipelined batch flushes early once its replies exceed this
# Deferred (write) calls one connection may have in flight: their replies are only known, and
# held, once the batch is settled, so a peer pipelining thousands of small writes with large
# replies (a Focus of a context with ~1 MiB of tags) and reading none made the daemon hold them
# all (1,500 calls: +4.7 GiB). The calls past it wait, unread, until the replies before them
# are written; a peer that does not read stalls only itself.
_MAX_IN_FLIGHT = 32
# ... and no more than may reply with about this many bytes: each deferred call reserves, as it
# starts, the most its reply can be (a whole frame; a `reply_like_call` handler's, its call's
# size: see `_dispatch_now`), and a connection starts no further call once its reservations pass
# this. One batch then holds about this plus one frame of replies, whatever they turn out to
# be. (The window used to be guessed from the last batch's replies: a batch of small ones let 32
# calls start that each answered a large reply, 32 frames on one connection.) Appends reserve
# their own size: pipelined ones still share the writer's batches, 32 at a time.
_WINDOW_BYTES = 1024 * 1024
# A `reply_like_call` reply's own bytes beyond its call's parameters (ids, seq, position,
# timestamps, the envelope).
_REPLY_SLACK = 1024
_LINGER_S = 1.0  # after a fatal error: how long to drain input so the peer can read the error
_HUP_POLL_S = 0.5  # during a stream to a half-closed peer: how often to look for its close
_MAX_LINGERING = 64  # rejected connections allowed to linger at once; beyond, closed at once
_REFUSED_DRAIN = 4  # reads of what a refused peer already sent, so that it sees EOF, not a reset
_EMPTY_REPLY = msgspec.Raw(b"{}")
_NULL = msgspec.Raw(b"null")
_NO_SECOND_TRY = object()
_PEERCRED = struct.Struct("3i")
_decode_call = CALL_DECODER.decode


class _Summarized:
    """At most one log line per `interval_s` for refused connections, which a peer can repeat
    at will (a flood of 15 s logged 340 lines); the ones left out are counted, and the next
    line says how many, or `flush` once the interval is over (a burst then silence must not
    lose its count)."""

    __slots__ = ("_left_out", "_next", "interval_s")

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._left_out = 0

    def info(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        self._next = now + self.interval_s
        if self._left_out:
            message += " (and %d more connections refused since the last such line)"
            args = (*args, self._left_out)
            self._left_out = 0
        log.info(message, *args)

    def flush(self) -> None:
        """Log the count left out once its interval is over (the idle sweeper calls it)."""
        if self._left_out and time.monotonic() >= self._next:
            log.info(
                "refused %d more connections since the last such line (GetStatus counts them "
                "by reason)",
                self._left_out,
            )
            self._left_out = 0
            self._next = time.monotonic() + self.interval_s


class PeerCredentials(msgspec.Struct, frozen=True):
    """The connecting process as the kernel saw it at connect time.

    `uid`, `gid`, `pid` from SO_PEERCRED; `groups` its supplementary groups from SO_PEERGROUPS
    (Linux 4.13+; empty where the kernel does not have it).
    """

    uid: int
    gid: int
    pid: int
    groups: tuple[int, ...] = ()


# SO_PEERGROUPS is not in Python's socket module; 59 on every Linux architecture.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_GID = struct.Struct("I")
_MAX_GROUPS = 65536  # NGROUPS_MAX


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """SO_PEERCRED and SO_PEERGROUPS of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(uid=uid, gid=gid, pid=pid, groups=_peer_groups(sock))


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups as recorded at connect time (race-free, unlike /proc)."""
    size = 64 * _GID.size
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < _MAX_GROUPS * _GID.size:
                size *= 16  # more groups than the buffer holds
                continue
            return ()  # ENOPROTOOPT: an older kernel
        return tuple(g for (g,) in _GID.iter_unpack(raw))


class CallContext(msgspec.Struct, frozen=True):
    """What a handler knows about the call besides its parameters."""

    peer: PeerCredentials
    interface: str
    method: str
    more: bool
    oneway: bool
    connection_id: int


@dataclass(frozen=True, slots=True)
class Final(Generic[R]):
    """Wraps the last reply of a stream: sent without `continues`, then the stream ends."""

    reply: R


@dataclass(frozen=True, slots=True)
class Live(Generic[R]):
    """Wraps the reply after which a stream waits for events: its later replies are built
    from what the application already counts (a watcher's queue in `VarlinkServer.buffers`),
    so its steps stop reserving a frame of the uid's share (`VarlinkServer._pump`)."""

    reply: R


# A handler gets the validated parameters and the context. It is a coroutine function returning
# the reply Struct (or an async iterator, to stream), an async generator function (a stream), or
# a plain function marked `@deferring` that returns a `Deferred` (deferred.py).
Handler = Callable[[Any, CallContext], Awaitable[Any] | AsyncIterator[Any] | Deferred]
# Raises an error the server's mapper names (or a VarlinkError) to refuse the call; the server
# sends the error and closes the connection.
Authorizer = Callable[[PeerCredentials, str, str], None]
# Runs once per accepted connection, before it takes a slot: answers the class the connection is
# counted in (see admission.py), or raises an error the server's mapper names to refuse the peer,
# which is sent that error and closed at once, holding no slot.
Admitter = Callable[[PeerCredentials], Admission]


class ServerLimits(msgspec.Struct, frozen=True):
    """The `[limits]` the protocol layer enforces; `idle_timeout_s` 0 keeps idle peers.

    `max_connections_per_uid` (0: none) and `reserved_connections` (slots only a privileged
    admission may take) are applied at accept, see admission.py. `idle_timeout_new_s` is the
    idle timeout of a connection that has not sent a whole call yet (0: `idle_timeout_s`).
    """

    max_message_bytes: int = 16 * 1024 * 1024
    max_connections: int = 256
    idle_timeout_s: float = 600.0
    # All connections' stream replies in flight, replies waiting for their peer to read and
    # large incoming frames together (see budget.py); 0: unbounded.
    max_buffered_bytes: int = 0
    # Of that budget, what one uid's connections may hold together (0: no share).
    max_buffered_bytes_per_uid: int = 0
    max_connections_per_uid: int = 0
    reserved_connections: int = 0
    idle_timeout_new_s: float = 0.0


class ServerStats(msgspec.Struct, frozen=True):
    """Counters for metrics; totals count since the server object was created."""

    connections_open: int
    connections_total: int
    connections_rejected: int
    streams_open: int
    calls_total: int
    errors_total: int
    protocol_errors_total: int
    internal_errors_total: int
    connections_by_tier: dict[str, int] = msgspec.field(default_factory=dict)
    rejected_by_reason: dict[str, int] = msgspec.field(default_factory=dict)


class _Entry:
    """One dispatchable method, looked up by its full name."""

    __slots__ = (
        "decoder",
        "defers",
        "full_name",
        "handler",
        "interface",
        "is_gen",
        "method",
        "optional_fields",
        "params",
        "reply_like_call",
    )

    def __init__(
        self, interface: str, method: str, params: type[Any], handler: Handler | None
    ) -> None:
        self.interface = interface
        self.method = method
        self.full_name = f"{interface}.{method}"
        # JSON decoding is strict: no str → int coercion; the same rules as msgspec.convert
        # with strict=True, in one pass from bytes to the Struct.
        self.params = params
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(params)
        self.optional_fields = has_optional_fields(params)
        self.handler = handler
        self.is_gen = handler is not None and inspect.isasyncgenfunction(handler)
        self.defers = bool(getattr(handler, DEFERRING, False))
        self.reply_like_call = bool(getattr(handler, REPLY_LIKE_CALL, False))

    def decode_again(self, raw: msgspec.Raw) -> Any:
        """The second try after a failed decode: `"parameters": null` means none, and null and
        absence mean the same for a `?T` field (`normalize_optional`); `_NO_SECOND_TRY` when
        neither applies, else the parameters or the ValidationError that remains.

        msgspec refuses null for a field typed `int = 100`, and absence for one typed
        `str | None` without a default, so such calls fail the fast decode and land here;
        nothing on the path of a valid call pays for it.

        The caller re-raises its own error: raising it here made a cycle (the error's
        traceback → this frame → the error) that kept this frame's copy of the parameters (a
        refused 10 MB call: 10 MB) alive until a full garbage collection (issue 18).
        """
        if raw == _NULL:
            return self.decoder.decode(b"{}")
        if not self.optional_fields:
            return _NO_SECOND_TRY
        value = msgspec.json.decode(raw)
        return self.decoder.decode(msgspec.json.encode(normalize_optional(self.params, value)))


# Connection states: only an _IDLE connection (waiting for a frame) may be closed by the idle
# sweeper or at shutdown without losing a call.
_IDLE = 0
_BUSY = 1
_STREAMING = 2


# A call whose handler is awaited: the method, its decoded parameters and its context.
_Awaited = tuple[_Entry, Any, CallContext]


class _Conn:
    __slots__ = (
        "called",
        "detached",
        "handoff",
        "id",
        "idle_since",
        "must_read",
        "out",
        "outstanding",
        "peer",
        "peer_gone",
        "queued",
        "reader",
        "reading",
        "reserved",
        "settled",
        "slots",
        "sock",
        "state",
        "stream",
        "stream_scope",
        "tier",
        "wake",
        "write_when_settled",
    )

    def __init__(
        self,
        cid: int,
        stream: SocketStream,
        sock: socket.socket,
        peer: PeerCredentials,
        tier: str,
        max_message_bytes: int,
        buffers: ByteBudget,
        into: ReceiveBuffer,
        settled: Callable[[_Conn], None],
    ) -> None:
        self.id = cid
        self.stream = stream
        self.reader = FrameReader(
            stream, max_message_bytes, budget=buffers, into=into, owner=peer.uid
        )
        self.sock = sock
        self.peer = peer
        self.tier = tier
        self.called = False  # no whole call received yet: the shorter idle timeout applies
        self.state: int = _BUSY
        self.idle_since = time.monotonic()
        self.stream_scope: anyio.CancelScope | None = None
        self.peer_gone = False
        self.out = bytearray()
        # Deferred calls of this read, in call order, each with where its reply goes in `out`.
        self.slots: list[tuple[int, Deferred, CallMessage]] = []
        self.outstanding = 0  # of `slots`, how many have no outcome yet
        self.reserved = 0  # the most bytes the replies of `slots` can be (see `_WINDOW_BYTES`)
        self.wake: Callable[[], None] | None = None  # wakes `_settle` when `outstanding` is 0
        # Every Deferred's done callback: the server's `_settled` for this connection, made once.
        self.settled: Callable[[], None] = functools.partial(settled, self)
        # Served by the loop's read callback, without a task (asyncio only; see `_detach`).
        self.detached = False
        self.write_when_settled = False  # the last outcome writes the read's replies
        self.reading = False  # the read callback is registered
        self.queued = False  # the callback read more while a batch was in flight
        self.must_read = False  # the callback met EOF or a reset: the task must read to see it
        # What the connection's task must do first when a callback hands the connection over
        # to it (a call to await, an error to send before closing); False: close after it.
        self.handoff: Callable[[], Awaitable[bool]] | None = None


class VarlinkServer:
    """Serves registered interfaces (and org.varlink.service) on a listening Unix socket.

    `map_error` names the application's exceptions (and may rename the library's own, see
    `errors.py`); without it, only a VarlinkError raised by a handler is sent as itself.
    """

    def __init__(
        self,
        info: ServiceInfo | Callable[[], ServiceInfo],
        *,
        limits: ServerLimits | None = None,
        authorize: Authorizer | None = None,
        admit: Admitter | None = None,
        map_error: ErrorMapper | None = None,
    ) -> None:
        self.info = info
        self.map_error = map_error
        self._limits = limits or ServerLimits()
        # Shared with the application (the daemon's watchers count in it too).
        self.buffers = ByteBudget(
            self._limits.max_buffered_bytes, self._limits.max_buffered_bytes_per_uid
        )
        # The same bounds, for non-stream replies only: those being built (each reserves a
        # frame first, `_dispatch_awaited`) and those waiting for their peer to read. Apart
        # from `buffers` so that a uid's lagging watchers, counted there, never hold up its
        # calls (a client that reads its Watch only between calls would wait on itself).
        self.replies = ByteBudget(
            self._limits.max_buffered_bytes, self._limits.max_buffered_bytes_per_uid
        )
        self._reply_reserve = self._limits.max_message_bytes + 1  # a frame, with its NUL
        # A peer that reads none of its replies for this long is dropped (the idle limit, for
        # the other direction).
        self._write_timeout: float | None = self._limits.idle_timeout_s or None
        self.authorize = authorize
        self.admit = admit
        self._slots = Slots()
        self._interfaces: dict[str, Interface] = {}
        self._methods: dict[str, _Entry] = {}
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        # Every connection's reads go through it: they all run on the server's one loop.
        self._receive = ReceiveBuffer()
        self._closing = False
        self._lingering = 0
        self._tg: TaskGroup | None = None
        self._listener: SocketListener | None = None
        self._drained = anyio.Event()
        self._stopped = anyio.Event()
        self._running = False
        self._on_asyncio = False
        self._loop: asyncio.AbstractEventLoop | None = None  # set: connections may detach
        # The tasks of attached connections: started from loop callbacks, where anyio's task
        # group cannot start one (it needs a current task), so plain asyncio tasks.
        self._attached: set[asyncio.Task[None]] = set()
        self._connections_total = 0
        self._streams = 0
        self._calls = 0
        self._errors = 0
        self._protocol_errors = 0
        self._internal_errors = 0
        self._oversized_logged: set[str] = set()  # methods whose too-large reply was logged
        self._refusals = _Summarized()  # refused connections: a line a second at most
        self.register(
            SERVICE,
            {
                "GetInfo": self._get_info,
                "GetInterfaceDescription": self._get_interface_description,
            },
        )

    # --- configuration ---------------------------------------------------------------------

    def register(self, interface: Interface, handlers: Mapping[str, Handler]) -> None:
        """Serve `interface`; a declared method without a handler answers MethodNotImplemented."""
        if interface.name in self._interfaces:
            raise ValueError(f"interface {interface.name} is already registered")
        declared = {m.name for m in interface.methods}
        extra = sorted(set(handlers) - declared)
        if extra:
            raise ValueError(f"{interface.name} declares no methods {extra}")
        self._interfaces[interface.name] = interface
        for m in interface.methods:
            entry = _Entry(interface.name, m.name, m.parameters, handlers.get(m.name))
            self._methods[entry.full_name] = entry

    @property
    def interfaces(self) -> list[str]:
        return list(self._interfaces)

    @property
    def limits(self) -> ServerLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: ServerLimits) -> None:
        """New limits apply at once, to open connections too (config reload)."""
        self._limits = limits
        self._write_timeout = limits.idle_timeout_s or None
        self.buffers.limit = self.replies.limit = limits.max_buffered_bytes
        self.buffers.share = self.replies.share = limits.max_buffered_bytes_per_uid
        self._reply_reserve = limits.max_message_bytes + 1
        for conn in self._conns.values():
            conn.reader.max_message_bytes = limits.max_message_bytes

    def stats(self) -> ServerStats:
        return ServerStats(
            connections_open=len(self._conns),
            connections_total=self._connections_total,
            connections_rejected=sum(self._slots.refused.values()),
            streams_open=self._streams,
            calls_total=self._calls,
            errors_total=self._errors,
            protocol_errors_total=self._protocol_errors,
            internal_errors_total=self._internal_errors,
            connections_by_tier=dict(self._slots.by_tier),
            rejected_by_reason=dict(self._slots.refused),
        )

    # --- org.varlink.service ---------------------------------------------------------------

    async def _get_info(self, params: GetInfoParams, ctx: CallContext) -> GetInfoReply:
        if not isinstance(self.info, ServiceInfo):
            # Given as a function: resolved at the first GetInfo, off the loop, so that what it
            # reads (the daemon's: its package metadata) is no part of the start-up.
            self.info = await anyio.to_thread.run_sync(self.info)
        i = self.info
        return GetInfoReply(i.vendor, i.product, i.version, i.url, list(self._interfaces))

    async def _get_interface_description(
        self, params: GetInterfaceDescriptionParams, ctx: CallContext
    ) -> GetInterfaceDescriptionReply:
        interface = self._interfaces.get(params.interface)
        if interface is None:
            raise VarlinkErrorReply(INTERFACE_NOT_FOUND, {"interface": params.interface})
        return GetInterfaceDescriptionReply(interface.description)

    # --- lifecycle -------------------------------------------------------------------------

    async def serve(
        self, listener: SocketListener, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept and serve until `shutdown()` (or cancellation); the listener is closed after."""
        if self._running:
            raise RuntimeError("the server is already serving")
        self._running = True
        self._on_asyncio = _on_asyncio()
        if self._on_asyncio:
            self._loop = asyncio.get_running_loop()
        self._listener = listener
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._accept_loop, listener)
                tg.start_soon(self._sweep_idle)
                task_status.started()
        finally:
            self._closing = True
            self._tg = None
            for conn in list(self._conns.values()):
                if conn.detached:  # no task to end it (a call still in flight at the deadline)
                    self._drop(conn)
            with anyio.CancelScope(shield=True):
                await self._end_attached()
                await listener.aclose()
            self._stopped.set()

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let calls in progress finish (up to `grace_s`), then close all."""
        if not self._closing:
            self._closing = True
            if self._listener is not None:
                await self._listener.aclose()
            for conn in list(self._conns.values()):
                if conn.state == _IDLE:
                    _hang_up(conn)
                elif conn.state == _STREAMING and conn.stream_scope is not None:
                    conn.stream_scope.cancel()
            if not self._conns:
                self._drained.set()
            with anyio.move_on_after(grace_s):
                await self._drained.wait()
            for task in self._attached:
                task.cancel()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        if self._running:
            await self._stopped.wait()

    async def _end_attached(self) -> None:
        """Cancel the attached connections' tasks and wait for them to close their sockets."""
        tasks = list(self._attached)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _accept_loop(self, listener: SocketListener) -> None:
        assert self._tg is not None
        while not self._closing:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except (anyio.BrokenResourceError, OSError) as exc:
                # EMFILE and friends: back off instead of spinning; existing peers keep working.
                log.warning("accept failed: %s", exc.__cause__ or exc)
                await anyio.sleep(0.1)
                continue
            if self._closing:
                await _close_quietly(stream)
                return
            await self._admit(stream)

    async def _admit(self, stream: SocketStream) -> None:
        """Give the accepted connection a slot, or refuse it; never waits on the peer."""
        assert self._tg is not None
        sock: socket.socket = stream.extra(SocketAttribute.raw_socket)  # noqa: S610
        try:
            peer = peer_credentials(sock)
        except OSError as exc:
            log.debug("accepted a connection without credentials: %s", exc)
            await _close_quietly(stream)
            return
        admission = EVERYONE
        if self.admit is not None:
            try:
                admission = self.admit(peer)
            except Exception as exc:
                # Before any slot: the peer holds nothing, whatever it does next.
                self._slots.refuse(ADMISSION_REFUSED)
                await self._refuse_at_once(stream, sock, peer, exc)
                return
        limits = self._limits
        refusal = self._slots.take(
            peer.uid,
            admission,
            max_connections=limits.max_connections,
            reserved=limits.reserved_connections,
            per_uid=limits.max_connections_per_uid,
        )
        if refusal is not None:
            self._refusals.info(
                "refused a connection of uid %d pid %d: %s", peer.uid, peer.pid, refusal.reason
            )
            self._tg.start_soon(self._reject, stream, refusal.error)
            return
        cid = next(self._ids)
        conn = _Conn(
            cid,
            stream,
            sock,
            peer,
            admission.tier,
            limits.max_message_bytes,
            self.buffers,
            self._receive,
            self._settled,
        )
        # Registered before its task runs, so that a burst of accepts counts it.
        self._conns[cid] = conn
        self._connections_total += 1
        if self._loop is not None:
            self._detach(conn)
        else:
            self._tg.start_soon(self._run_connection, conn)

    async def _refuse_at_once(
        self, stream: SocketStream, sock: socket.socket, peer: PeerCredentials, exc: Exception
    ) -> None:
        """Send the hook's refusal and close, without a task or a wait: a peer that is let in
        nowhere costs one accept, one small write and a close, however often it reconnects."""
        named = self._named(exc)
        if named is None:  # a failing hook: deny by default, as for the authorizer
            log.error("the admission hook failed for uid %d", peer.uid, exc_info=exc)
            frame = self._encode_own(InternalFailure("(connect)", type(exc).__name__))
        else:
            self._refusals.info("refused uid %d pid %d at connect: %s", peer.uid, peer.pid, exc)
            frame = encode_error(*named)
        try:
            # A fresh socket's buffer is empty: it takes a small frame whole, without a wait.
            sock.send(frame, socket.MSG_DONTWAIT)
            # Read what the peer already sent (its first call, typically) so that it meets our
            # error and then EOF rather than a reset; what it sends after the close is its loss.
            for _ in range(_REFUSED_DRAIN):
                if not sock.recv(65536, socket.MSG_DONTWAIT):
                    break
        except OSError:
            pass  # BlockingIOError: nothing (more) to read; anything else: the peer is gone
        await _close_quietly(stream)

    async def _reject(self, stream: SocketStream, error: LimitReached) -> None:
        frame = self._encode_own(error)
        try:
            await stream.send(frame)
            if self._lingering < _MAX_LINGERING:
                self._lingering += 1
                try:
                    await _drain_and_close(stream, _LINGER_S)
                finally:
                    self._lingering -= 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await _close_quietly(stream)

    async def _sweep_idle(self) -> None:
        """Close connections idle past `idle_timeout_s`, or past `idle_timeout_new_s` while they
        have not sent a whole call yet (a timer per wait would cost per call)."""
        while True:
            idle = self._limits.idle_timeout_s
            new = self._limits.idle_timeout_new_s
            if new <= 0 or 0 < idle < new:
                new = idle  # never longer than the idle timeout of a peer that did call
            await anyio.sleep(min(1.0, new / 4) if new > 0 else 1.0)
            self._refusals.flush()
            now = time.monotonic()
            for conn in list(self._conns.values()):
                timeout = idle if conn.called else new
                if conn.state == _IDLE and 0 < timeout < now - conn.idle_since:
                    log.debug(
                        "connection %d (uid %d) idle for %.1fs%s: closing",
                        conn.id,
                        conn.peer.uid,
                        timeout,
                        "" if conn.called else " without a call",
                    )
                    _hang_up(conn)

    # --- one connection, without a task (asyncio) -------------------------------------------

    def _detach(self, conn: _Conn) -> None:
        """Serve `conn` from a read callback that stays registered (no task, no wait, no
        add_reader/remove_reader per call): each read's frames are dispatched at once, and
        when they were all deferred calls or errors (a run of writes) their replies are
        written by the callback of the last Deferred. Anything else hands the connection to a
        task running the code above (`_attach`), which detaches it again once idle."""
        assert self._loop is not None
        if self._tg is None:  # the server has stopped while a task was answering
            self._drop(conn)
            return
        conn.detached = True
        conn.queued = False
        conn.state = _IDLE
        conn.idle_since = time.monotonic()
        self._resume_reading(conn)

    def _resume_reading(self, conn: _Conn) -> None:
        if not conn.reading:
            assert self._loop is not None
            self._loop.add_reader(conn.sock.fileno(), self._on_readable, conn)
            conn.reading = True

    def _pause_reading(self, conn: _Conn) -> None:
        if conn.reading:
            assert self._loop is not None
            self._loop.remove_reader(conn.sock.fileno())
            conn.reading = False

    def _attach(self, conn: _Conn) -> None:
        """Hand `conn` to a task: for a call that awaits or streams, an error that closes, a
        reply the socket did not take whole, the end of the input, the server stopping."""
        self._pause_reading(conn)
        conn.detached = False
        conn.write_when_settled = False  # the task's `_settle` waits for what is outstanding
        conn.state = _BUSY
        conn.wake = None
        if self._tg is None or self._loop is None:  # the server has stopped
            self._drop(conn)
            return
        task = self._loop.create_task(self._run_connection(conn))
        self._attached.add(task)
        task.add_done_callback(self._attached.discard)

    def _drop(self, conn: _Conn) -> None:
        """Close a detached connection at once (the server is gone)."""
        self._pause_reading(conn)
        conn.detached = False
        conn.write_when_settled = False
        conn.wake = None
        self._release(conn)
        conn.sock.close()

    def _on_readable(self, conn: _Conn) -> None:
        receive = self._receive
        try:
            n = conn.sock.recv_into(receive.buffer)
        except BlockingIOError:
            return
        except OSError:
            n = 0  # reset: the task meets it again (or EOF) and ends the connection
        try:
            if not n:
                conn.must_read = True  # EOF, possibly inside a frame: the task says which
                self._attach(conn)
                return
            chunk = bytes(receive.view[:n])
            reader = conn.reader
            if conn.state != _IDLE:
                # A batch is in flight: its replies go first. Keep these calls for when it is
                # written, and stop reading once they fill a read (bounded, like the task).
                reader.feed(chunk)
                conn.queued = True
                if reader.pending_bytes >= DEFAULT_RECEIVE_SIZE or reader.failed:
                    self._pause_reading(conn)
                return
            self._run_read(conn, reader.split(chunk))
        except Exception:
            self._callback_failed(conn)

    def _callback_failed(self, conn: _Conn) -> None:
        """A bug in a callback: log it and end the connection (its task closes it)."""
        log.exception("connection %d failed", conn.id)
        _hang_up(conn)
        if conn.detached:
            self._attach(conn)

    def _run_read(self, conn: _Conn, frames: list[bytes]) -> None:
        """Dispatch the frames read; reply now, or when the last Deferred is settled."""
        reader = conn.reader
        if not frames:
            if reader.failed:
                self._attach(conn)  # the task sends the error
            return  # the start of a frame: wait for the rest
        conn.state = _BUSY
        conn.called = True
        for i, frame in enumerate(frames):
            if self._closing:
                reader.put_back(frames[i:])  # the task answers ServerStopping
                self._attach(conn)
                return
            try:
                call = _decode_call(frame)
            except Exception:
                try:
                    call = decode_call(frame)  # the same decode again names what is wrong
                except FrameError as exc:
                    conn.handoff = functools.partial(self._fail_and_close, conn, exc)
                    self._attach(conn)
                    return
            now = self._dispatch_now(conn, call)
            if now is True:
                if len(conn.out) > _FLUSH_BYTES:  # many answered at once (errors): the task
                    reader.put_back(frames[i + 1 :])  # writes them as it would, in bounded steps
                    self._attach(conn)
                    return
                if conn.reserved >= _WINDOW_BYTES or len(conn.slots) >= _MAX_IN_FLIGHT:
                    # Enough writes in flight: the rest are dispatched once these replies are
                    # written (`_settled` takes them again), so their bytes stay bounded.
                    rest = frames[i + 1 :]
                    if rest:
                        reader.put_back(rest)
                        conn.queued = True
                    break
                continue
            if now is False:
                conn.handoff = functools.partial(self._close_after_reply, conn)
            else:
                conn.handoff = functools.partial(self._handoff_call, conn, call, now)
                reader.put_back(frames[i + 1 :])
            self._attach(conn)
            return
        if reader.failed:
            self._attach(conn)  # answers the calls above, then the error
            return
        conn.write_when_settled = True
        if not conn.outstanding:
            self._settled(conn)

    def _settled(self, conn: _Conn) -> None:
        """Every Deferred's done callback (on the event loop), and the end of a read answered
        at once: when no outcome is outstanding, wake the connection's task, or (served by the
        read callback) write the read's replies and serve what came meanwhile."""
        if conn.outstanding:
            conn.outstanding -= 1
            if conn.outstanding:
                return
        if not conn.write_when_settled:
            if conn.wake is not None:
                conn.wake()
            return
        conn.write_when_settled = False
        try:
            if conn.slots:
                self._place_deferred(conn)
            out = conn.out
            if out:
                try:
                    sent = conn.sock.send(out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    conn.out = bytearray()  # the peer is gone: nothing to tell it
                    self._attach(conn)
                    return
                if sent < len(out):
                    del out[:sent]  # the task writes the rest, within the write timeout
                    self._attach(conn)
                    return
                conn.out = bytearray()
            if self._closing:
                self._attach(conn)
                return
            conn.state = _IDLE
            conn.idle_since = time.monotonic()
            if not conn.reading:
                self._resume_reading(conn)
            if conn.queued:
                conn.queued = False
                self._run_read(conn, conn.reader.take_frames())
        except Exception:
            self._callback_failed(conn)

    async def _fail_and_close(self, conn: _Conn, exc: FrameError) -> bool:
        await self._fail_connection(conn, exc)
        return False

    async def _close_after_reply(self, conn: _Conn) -> bool:
        await self._fatal_reply(conn, b"")
        return False

    async def _handoff_call(self, conn: _Conn, call: CallMessage, now: _Awaited) -> bool:
        if await self._dispatch_awaited(conn, call, now):
            return True
        await self._fatal_reply(conn, b"")
        return False

    # --- one connection --------------------------------------------------------------------

    async def _run_connection(self, conn: _Conn) -> None:
        detached = False
        try:
            detached = await self._serve_connection(conn)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass  # the peer went away; nothing to tell it
        except OSError as exc:
            log.debug("connection %d: %s", conn.id, exc)
        except Exception:
            log.exception("connection %d failed", conn.id)
        finally:
            if not detached:
                self._release(conn)
                await _close_quietly(conn.stream)

    def _release(self, conn: _Conn) -> None:
        conn.settled = _nothing  # a cycle (conn → partial → conn): freed now, not by the GC
        if self._conns.pop(conn.id, None) is not None:
            self._slots.release(conn.peer.uid, conn.tier)
        conn.reader.release()
        if self._closing and not self._conns:
            self._drained.set()

    async def _serve_connection(self, conn: _Conn) -> bool:
        """Serve until the connection ends (False) or is handed back to the read callback
        (True: it stays open, with no task)."""
        reader = conn.reader
        handoff, conn.handoff = conn.handoff, None
        if handoff is not None and not await handoff():
            return False
        if conn.out or conn.slots:
            await self._flush(conn)  # what the callback left: replies of earlier calls
        while True:
            frames = reader.take_frames()
            if not frames:
                if self._closing:
                    return False
                if self._loop is not None and not reader.failed and not conn.must_read:
                    self._detach(conn)
                    return True
                conn.must_read = False
                conn.idle_since = time.monotonic()
                conn.state = _IDLE
                try:
                    frames = await reader.receive_frames()
                except anyio.EndOfStream:
                    return False
                except FrameError as exc:
                    conn.state = _BUSY
                    await self._fail_connection(conn, exc)
                    return False
                finally:
                    conn.state = _BUSY
            conn.called = True
            for frame in frames:
                if self._closing:
                    await self._fatal_reply(conn, self._encode_own(ServerStopping()))
                    return False
                try:
                    call = decode_call(frame)
                except FrameError as exc:
                    await self._fail_connection(conn, exc)
                    return False
                if not await self._dispatch(conn, call):
                    await self._fatal_reply(conn, b"")
                    return False
                if (
                    len(conn.out) > _FLUSH_BYTES
                    or conn.reserved >= _WINDOW_BYTES
                    or len(conn.slots) >= _MAX_IN_FLIGHT
                ):
                    await self._flush(conn)
            if conn.out or conn.slots:
                await self._flush(conn)

    async def _flush(self, conn: _Conn) -> None:
        """Write every reply so far, the deferred ones' too (waiting for them first)."""
        if conn.slots:
            await self._settle(conn)
        if conn.out:
            out = conn.out
            conn.out = bytearray()
            sent = send_at_once(conn.sock, out)
            if sent == len(out):
                return  # the common case: nothing waits, nothing to count
            # What the socket did not take waits for the peer, and counts in the daemon-wide
            # budget and the uid's share meanwhile, like a stream's reply: it is already built,
            # so counted even past the limit (streams and large frames then wait or are
            # refused), and the connection starts nothing more until it is written. What the
            # kernel took is dropped here (freed when it is most of the buffer); the budget
            # never counted it, the kernel holds its copy.
            del out[:sent]
            size = len(out)
            uid = conn.peer.uid
            self.buffers.count(size, uid)
            self.replies.count(size, uid)
            try:
                await send_rest(conn.sock, out, self._write_timeout)
            finally:
                self.buffers.give(size, uid)
                self.replies.give(size, uid)

    async def _fail_connection(self, conn: _Conn, exc: FrameError) -> None:
        """A frame we cannot trust: answer what came before it, say why, and hang up."""
        self._protocol_errors += 1
        if isinstance(exc, IncompleteFrame):
            await self._flush(conn)  # the peer hung up mid-frame: nobody to explain it to
            return
        err: VarlinkError
        if isinstance(exc, FrameTooLarge):
            err = LimitReached(exc.limit, exc.size, exc.maximum)
        else:
            err = ProtocolViolation(exc.reason)
        log.info("connection %d (pid %d): %s; closing", conn.id, conn.peer.pid, exc.reason)
        self._errors += 1
        await self._fatal_reply(conn, self._encode_own(err))

    async def _fatal_reply(self, conn: _Conn, frame: bytes) -> None:
        conn.out += frame
        await self._flush(conn)
        # While stopping, nobody waits for a straggler to finish sending.
        await _drain_and_close(conn.stream, 0.0 if self._closing else _LINGER_S)

    async def _dispatch(self, conn: _Conn, call: CallMessage) -> bool:
        """Answer one call into `conn.out`; False when the connection must close after it."""
        now = self._dispatch_now(conn, call)
        if isinstance(now, bool):
            return now
        return await self._dispatch_awaited(conn, call, now)

    def _dispatch_now(self, conn: _Conn, call: CallMessage) -> bool | _Awaited:
        """Everything of a call that needs no wait: an error, a deferred call queued (True), a
        refusal that closes (False); else what `_dispatch_awaited` needs to call the handler."""
        self._calls += 1
        entry = self._methods.get(call.method)
        if entry is None:
            return self._unknown_method(conn, call)
        authorize = self.authorize
        if authorize is not None:
            try:
                authorize(conn.peer, entry.interface, entry.method)
            except Exception as exc:
                self._not_authorized(conn, call, exc, entry.interface)
                return False
        if call.upgrade:
            # No method here takes the connection over, and any plain reply would read as
            # the confirmation of the upgrade: refuse it, and the stream stays Varlink.
            self._invalid(conn, call, "upgrade", "no method of this service upgrades it")
            return True
        handler: Any = entry.handler
        if handler is None:
            self._error(conn, call, METHOD_NOT_IMPLEMENTED, {"method": entry.full_name})
            return True
        try:
            try:
                params = entry.decoder.decode(call.parameters)
            except msgspec.ValidationError:
                params = entry.decode_again(call.parameters)
                if params is _NO_SECOND_TRY:
                    raise
        except RecursionError:
            # Nested too deeply to decode (the envelope only skipped over it).
            self._invalid(conn, call, "parameters", "nested too deeply")
            return True
        except msgspec.ValidationError as exc:
            self._invalid(conn, call, *invalid_parameter(exc))
            return True
        except (UnicodeDecodeError, msgspec.DecodeError) as exc:
            # The envelope skipped over the parameters without checking their text: invalid
            # UTF-8 in them makes the frame malformed JSON, like anywhere else in it.
            self._protocol_errors += 1
            self._errors += 1
            conn.out += self._encode_own(ProtocolViolation(json_problem(exc, call.parameters)))
            return False
        # The flags are `?bool`: `is True` is `bool()` of them, without a call.
        ctx = CallContext(
            conn.peer,
            entry.interface,
            entry.method,
            call.more is True,
            call.oneway is True,
            conn.id,
        )
        if entry.defers:
            try:
                deferred: Deferred = handler(params, ctx)
            except Exception as exc:
                self._send_exception(conn, call, exc)
                return True
            conn.slots.append((len(conn.out), deferred, call))
            if not call.oneway:
                conn.reserved += (
                    len(call.parameters) + _REPLY_SLACK
                    if entry.reply_like_call
                    else self._limits.max_message_bytes
                )
            conn.outstanding += 1
            deferred.add_done_callback(conn.settled)
            return True
        return entry, params, ctx

    async def _dispatch_awaited(self, conn: _Conn, call: CallMessage, now: _Awaited) -> bool:
        """The call of a handler that is awaited or streams."""
        entry, params, ctx = now
        assert entry.handler is not None
        if conn.slots:
            await self._settle(conn)  # what this call reads must include the writes before it
        # The reply is built before anything counts it, and may be a whole frame: the call
        # first reserves that much of its uid's share of `replies` (waiting, unread, while its
        # uid's unread replies fill it), so that one uid's connections cannot each hold a
        # frame built past the share (64 unread ListBlocks pages: +900 MiB). A stream's
        # replies are counted one by one in `_pump` instead (a live Watch waits for events).
        reserve = 0 if call.oneway or (entry.is_gen and call.more) else self._reply_reserve
        uid = conn.peer.uid
        if reserve:
            await self.replies.take(reserve, uid)
        mark = len(conn.out)
        try:
            result: Any = entry.handler(params, ctx)
            if not entry.is_gen:
                result = await result
                if isinstance(result, msgspec.Struct) or not hasattr(result, "__anext__"):
                    if not call.oneway:
                        append_reply(conn.out, _EMPTY_REPLY if result is None else result)
                        size = len(conn.out) - mark - 1  # the limit does not count the NUL
                        if size > self._limits.max_message_bytes:
                            raise self._oversized(conn, call, size)
                    return True
        except Exception as exc:
            del conn.out[mark:]
            self._send_exception(conn, call, exc)
            return True
        finally:
            if reserve:
                # What the socket does not take of it is counted again as it is flushed.
                self.replies.give(reserve, uid)
        return await self._stream(conn, call, result)

    async def _settle(self, conn: _Conn) -> None:
        """Wait for the deferred calls (one wait, however many), then put their replies into
        `conn.out` where their calls stand among the others'."""
        if conn.outstanding:
            try:
                await self._until_woken(conn)
            finally:
                conn.wake = None
        self._place_deferred(conn)

    def _place_deferred(self, conn: _Conn) -> None:
        """Put the settled deferred calls' replies into `conn.out` in their calls' places."""
        slots, conn.slots = conn.slots, []
        before = conn.out
        splice = slots[0][0] < len(before)  # replies of later calls are there already
        if splice:
            conn.out = bytearray()
        done = 0
        largest = self._limits.max_message_bytes + 1  # a reply's frame, with its NUL
        for offset, deferred, call in slots:
            if splice:
                conn.out += before[done:offset]
                done = offset
            mark = len(conn.out)
            try:
                result = deferred.outcome()
                if not call.oneway:
                    append_reply(conn.out, _EMPTY_REPLY if result is None else result)
                    if len(conn.out) - mark > largest:
                        raise self._oversized(conn, call, len(conn.out) - mark - 1)
            except Exception as exc:
                del conn.out[mark:]
                self._send_exception(conn, call, exc)
        if splice:
            conn.out += before[done:]
        conn.reserved = 0

    def _oversized(self, conn: _Conn, call: CallMessage, size: int) -> LimitReached:
        """The error that replaces a reply too large for one frame (a client with the same
        limit could not read it, and an unread one was held whole: a GetContext with 500
        cross-references of 64 KiB notes made a 31 MiB frame). The caller drops the frame.

        Every reply the server builds comes here when it is too large: an awaited handler's,
        a deferred call's, a streaming method's first reply and every later reply of a
        stream (which the error then ends), so a client meets one text for all of them.

        Logged as a warning once per method (then at debug): a peer repeating the call must
        not fill the journal; the operator learns which method outgrew the limit."""
        maximum = self._limits.max_message_bytes
        level = logging.DEBUG if call.method in self._oversized_logged else logging.WARNING
        self._oversized_logged.add(call.method)
        log.log(
            level,
            "refused the reply of %s (connection %d, uid %d): %d bytes > max_message_bytes %d%s",
            call.method,
            conn.id,
            conn.peer.uid,
            size,
            maximum,
            "" if level == logging.DEBUG else "; further ones of this method are logged at debug",
        )
        return LimitReached(f"max_message_bytes (reply of {call.method})", size, maximum)

    async def _until_woken(self, conn: _Conn) -> None:
        """Wait for `conn.wake()`: a bare future on asyncio (measured: an anyio.Event costs a
        wrapper and a second future per wait, and this wait happens once per read)."""
        if not self._on_asyncio:
            event = anyio.Event()
            conn.wake = event.set
            await event.wait()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        conn.wake = wake
        await future

    def _unknown_method(self, conn: _Conn, call: CallMessage) -> bool:
        interface, _, method = call.method.rpartition(".")
        if self.authorize is not None:
            try:
                self.authorize(conn.peer, interface, method)
            except Exception as exc:
                self._not_authorized(conn, call, exc, interface)
                return False
        if interface in self._interfaces:
            self._error(conn, call, METHOD_NOT_FOUND, {"method": call.method})
        else:
            self._error(conn, call, INTERFACE_NOT_FOUND, {"interface": interface})
        return True

    def _not_authorized(
        self, conn: _Conn, call: CallMessage, exc: Exception, interface: str
    ) -> None:
        """The hook refused the call (or failed: deny by default): send why."""
        named = self._named(exc, interface)
        if named is None:
            self._internal_error(conn, call, exc)
        else:
            self._refuse(conn, call, exc, named)

    def _named(
        self, exc: Exception, interface: str | None = None
    ) -> tuple[str, Mapping[str, Any]] | None:
        """The error name and parameters to send for `exc`; None: nobody named it (a bug).
        `interface`: the called method's (None outside a call), for the mapper."""
        if isinstance(exc, VarlinkError):
            return self._own(exc, interface)
        return self.map_error(exc, interface) if self.map_error is not None else None

    def _own(
        self, exc: VarlinkError, interface: str | None = None
    ) -> tuple[str, Mapping[str, Any]]:
        """A VarlinkError as the mapper renames it, else as itself."""
        named = self.map_error(exc, interface) if self.map_error is not None else None
        return named or (exc.name, exc.parameters)

    def _encode_own(self, exc: VarlinkError, interface: str | None = None) -> bytes:
        return encode_error(*self._own(exc, interface))

    def _refuse(
        self,
        conn: _Conn,
        call: CallMessage,
        exc: Exception,
        named: tuple[str, Mapping[str, Any]],
    ) -> None:
        log.info(
            "refused %s for uid %d gid %d pid %d: %s",
            call.method,
            conn.peer.uid,
            conn.peer.gid,
            conn.peer.pid,
            exc,
        )
        # Sent even for oneway calls: the peer is about to be disconnected and should know why.
        self._errors += 1
        conn.out += encode_error(*named)

    def _error(self, conn: _Conn, call: CallMessage, name: str, params: Mapping[str, Any]) -> None:
        self._errors += 1
        if not call.oneway:
            conn.out += encode_error(name, params)

    def _invalid(self, conn: _Conn, call: CallMessage, parameter: str, problem: str) -> None:
        """InvalidParameter with the standard's one parameter; what was wrong goes to the log."""
        log.debug("%s (connection %d): invalid %s: %s", call.method, conn.id, parameter, problem)
        self._error(conn, call, INVALID_PARAMETER, {"parameter": parameter})

    def _send_exception(self, conn: _Conn, call: CallMessage, exc: Exception) -> None:
        """Send the error `exc` names; one nobody names is an internal error."""
        named = self._named(exc, _interface_of(call))
        if named is None:
            self._internal_error(conn, call, exc)
            return
        try:
            frame = encode_error(*named)
        except (TypeError, ValueError) as enc:
            self._internal_error(conn, call, enc)
            return
        self._errors += 1
        if not call.oneway:
            conn.out += frame

    def _internal_error(self, conn: _Conn, call: CallMessage, exc: BaseException) -> None:
        self._internal_errors += 1
        log.error("%s failed (connection %d)", call.method, conn.id, exc_info=exc)
        failure = InternalFailure(call.method, type(exc).__name__)
        self._error(conn, call, *self._own(failure, _interface_of(call)))

    # --- streams ---------------------------------------------------------------------------

    async def _stream(self, conn: _Conn, call: CallMessage, iterator: Any) -> bool:
        if not call.more or call.oneway:
            return await self._first_reply(conn, call, iterator)
        await self._flush(conn)  # earlier replies of the batch must not wait for the stream
        self._streams += 1
        conn.state = _STREAMING
        try:
            with anyio.CancelScope() as scope:
                conn.stream_scope = scope
                if self._closing:  # began after `shutdown` ended the streams: ends at once
                    scope.cancel()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_peer, conn, scope)
                    await self._pump(conn, call, iterator)
                    tg.cancel_scope.cancel()
        finally:
            conn.stream_scope = None
            conn.state = _BUSY
            self._streams -= 1
            await _aclose_iterator(iterator)
        if conn.peer_gone:
            return False
        if scope.cancelled_caught and self._closing:
            conn.out += self._encode_own(ServerStopping(), _interface_of(call))
            return False
        return True

    async def _pump(self, conn: _Conn, call: CallMessage, iterator: Any) -> None:
        """Send every reply of the stream; never raises but for cancellation.

        The next reply is pulled only once this one is in the socket (`send_all` returns when
        the kernel took it all): a peer that does not read holds up its own stream, and the
        daemon holds one reply for it. Each step first reserves a frame of its uid's share of
        `replies`, as a call does (`_dispatch_awaited`), and holds it until its reply is in the
        socket: a part is built (up to a frame) before anything else could count it, and one
        uid's unread exports each held one past the share (48 at a 1 MiB frame: +128 MiB).
        Once the stream is `Live` its steps wait for events and build from a queue counted in
        `buffers`: they wait there for room instead, holding no reservation."""
        uid = conn.peer.uid
        live = False
        try:
            while True:
                reserve = 0 if live else self._reply_reserve
                if reserve:
                    await self.replies.take(reserve, uid)
                try:
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        raise RuntimeError(
                            f"the stream of {call.method} ended without a Final reply"
                        ) from None
                    if isinstance(item, Live):
                        live = True
                        item = item.reply
                    buf = bytearray()
                    final = isinstance(item, Final)
                    append_reply(buf, item.reply if final else item, continues=not final)
                    # The frame is what goes out: a peer that does not read holds it, not the
                    # reply object (with every value in it) a second time.
                    del item
                    await self._send_reply(conn, call, buf, reserved=bool(reserve))
                finally:
                    if reserve:
                        self.replies.give(reserve, uid)
                if final:
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            conn.peer_gone = True
        except Exception as exc:
            self._send_exception(conn, call, exc)
        # An error ends the stream: send it now, the connection may stay open for more calls.
        if conn.out and not conn.peer_gone:
            try:
                await self._flush(conn)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                conn.peer_gone = True

    async def _send_reply(
        self, conn: _Conn, call: CallMessage, buf: bytearray, *, reserved: bool
    ) -> None:
        """One stream reply: refused when over max_message_bytes (`_oversized`: a frame no
        client with the same limit could read); else sent within the daemon-wide budget.

        A reply built under a reservation (`reserved`) is counted there at once, even past
        the limit, like a call's unsent reply (`_flush`): it must not wait for room that the
        uid's watchers hold while it holds a frame of the uid's calls. A live stream's reply
        waits for room in `buffers` first (back-pressure)."""
        size = len(buf)
        if size - 1 > self._limits.max_message_bytes:  # the limit does not count the NUL
            raise self._oversized(conn, call, size - 1)
        uid = conn.peer.uid  # waits for room in the peer's share too
        if reserved:
            self.buffers.count(size, uid)
        else:
            await self.buffers.take(size, uid)
        try:
            await send_all(conn.stream, conn.sock, cast(bytes, buf), self._write_timeout)
        finally:
            self.buffers.give(size, uid)

    async def _watch_peer(self, conn: _Conn, scope: anyio.CancelScope) -> None:
        """During a stream, read ahead (bounded) so that a hang-up ends the stream at once.

        `fill` waits with `wait_readable`, which (unlike a pending stream `receive`) can be
        cancelled cleanly when the stream ends.
        """
        reader = conn.reader
        try:
            while reader.pending_bytes <= reader.max_message_bytes and not reader.failed:
                await reader.fill()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # reset: gone
        except anyio.EndOfStream:
            # A peer that shut only its sending side (a half-close: "no more calls") still
            # reads its replies, as it does for a call without `more`: the stream goes on
            # until the peer closes for good.
            await _until_hung_up(conn.sock)
        else:
            if not reader.at_eof:
                return  # read ahead as far as allowed: a hang-up shows at the next write
            await _until_hung_up(conn.sock)  # the same, after a partial frame
        conn.peer_gone = True
        scope.cancel()

    async def _first_reply(self, conn: _Conn, call: CallMessage, iterator: Any) -> bool:
        """A streaming method called without `more`: its first reply is the answer."""
        try:
            try:
                item = await iterator.__anext__()
            finally:
                await _aclose_iterator(iterator)
            if isinstance(item, Final | Live):
                item = item.reply
            if not call.oneway:
                buf = bytearray()  # not straight into conn.out: encoding may fail halfway
                append_reply(buf, item)
                if len(buf) - 1 > self._limits.max_message_bytes:
                    raise self._oversized(conn, call, len(buf) - 1)
                conn.out += buf
        except StopAsyncIteration:
            self._internal_error(conn, call, RuntimeError(f"{call.method} replied nothing"))
        except Exception as exc:
            self._send_exception(conn, call, exc)
        return True


def _nothing() -> None:
    pass


def _interface_of(call: CallMessage) -> str:
    """The interface a call's method name asks for (served or not)."""
    return call.method.rpartition(".")[0]


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # another anyio backend (trio)
    return True


async def _until_hung_up(sock: socket.socket) -> None:
    """Return once the peer has closed its end for good (POLLHUP on a Unix socket: a
    half-close alone does not raise it)."""
    if sock.fileno() < 0:
        return
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # POLLHUP and POLLERR are reported whatever the mask
    while not poller.poll(0):  # noqa: ASYNC110 - the kernel has no event to await for it
        await anyio.sleep(_HUP_POLL_S)


def _hang_up(conn: _Conn) -> None:
    """End an idle connection: its pending receive sees EOF and the task ends normally (no
    cancellation of a receive in flight, which anyio's raw-socket streams do not take well)."""
    try:
        conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


async def _aclose_iterator(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(5, shield=True):
        try:
            await aclose()
        except Exception:
            log.exception("closing a reply stream failed")


async def _drain_and_close(stream: SocketStream, linger_s: float) -> None:
    """Half-close, then discard input for a moment so the peer can finish sending and read
    our last reply instead of meeting EPIPE; nothing read here is kept."""
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)  # noqa: S610
    try:
        sock.shutdown(socket.SHUT_WR)
        with anyio.move_on_after(linger_s):
            while True:
                await anyio.wait_readable(sock)  # cancellable cleanly, unlike stream.receive
                try:
                    if not sock.recv(65536):
                        break
                except BlockingIOError:
                    continue
    except OSError:
        pass
    finally:
        await _close_quietly(stream)


async def _close_quietly(stream: SocketStream) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except Exception as exc:
            log.debug("closing a connection: %s", exc)


# --- listening sockets -----------------------------------------------------------------------


def bind_unix_socket(path: str | os.PathLike[str], mode: int = 0o660) -> socket.socket:
    """A listening Unix socket at `path` with `mode`; the parent is created 0750 if missing.

    A stale socket file is replaced; a socket that still answers (another server is
    listening on it) or a path that is not a socket is refused rather than taken over.
    """
    p = Path(path)
    if not p.parent.exists():
        p.parent.mkdir(parents=True, mode=0o750)
        p.parent.chmod(0o750)  # mkdir's mode is filtered by the umask
    try:
        st = p.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(p))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(p))
        except OSError:
            p.unlink(missing_ok=True)  # stale: nobody listens
        else:
            raise OSError(errno.EADDRINUSE, "another server is listening on this socket", str(p))
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(p))
        p.chmod(mode)
        sock.listen(min(socket.SOMAXCONN, 4096))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen_unix(path: str | os.PathLike[str], mode: int = 0o660) -> SocketListener:
    """`bind_unix_socket` wrapped as an anyio listener."""
    return await listener_from_socket(bind_unix_socket(path, mode))


async def listener_from_socket(sock: socket.socket) -> SocketListener:
    """An already listening socket (systemd socket activation) as an anyio listener."""
    sock.setblocking(False)
    return await SocketListener.from_socket(sock)
