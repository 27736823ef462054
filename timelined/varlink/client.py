"""Minimal Varlink client transports: async (anyio) and blocking (plain sockets).

One sans-I/O core, `ConnectionCore`, holds everything a connection knows: it encodes calls,
splits the bytes received into frames (with the reply size limit), decodes replies, tracks
`continues`, and turns error replies and failures into exceptions. The two connection classes,
`AsyncConnection` and `Connection`, are thin shells that only move bytes between it and a
socket; the two pools, `AsyncVarlinkClient` and `VarlinkClient`, share `_Pool`.

The blocking pool keeps a few open connections, so consecutive calls reuse one, and concurrent
threads each get their own. The async pool sends the calls of concurrent tasks on one shared
connection, pipelined (`pipeline.py`), and gives each stream a pooled connection of its own. A
call that fails halfway (the peer hung up, the caller
was cancelled, a stream was abandoned) leaves its connection unusable, because the replies on
it can no longer be matched to calls; the core knows this from its own state.

Failures are raised as the `ReplyMapper` given (default: as they are) makes them of:
- `VarlinkErrorReply(name, parameters)` — the service answered with a named error;
- `ConnectionFailed` — no socket, nobody listening, permission refused on the socket, or the
  connection closed before the reply;
- `ProtocolViolation` — the reply was not a Varlink message (or too large).
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
)
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import anyio
import msgspec
from anyio.abc import SocketAttribute, SocketStream

from timelined.varlink.errors import (
    ConnectionFailed,
    ProtocolViolation,
    ReplyMapper,
    VarlinkErrorReply,
    keep_error,
)
from timelined.varlink.framing import (
    CLIENT_RECEIVE_SIZE,
    FrameSplitter,
    FrameTooLarge,
    raw_socket,
    receive_chunk,
    send_all,
)
from timelined.varlink.pipeline import PipelinedConnection
from timelined.varlink.protocol import encode_call, parse_reply

__all__ = [
    "AsyncConnection",
    "AsyncVarlinkClient",
    "Connection",
    "ConnectionCore",
    "Parameters",
    "VarlinkClient",
    "VarlinkErrorReply",
]

T = TypeVar("T")
Parameters = Mapping[str, Any] | msgspec.Struct | None

DEFAULT_MAX_REPLY_BYTES = 256 * 1024 * 1024
_RECV = CLIENT_RECEIVE_SIZE
_EMPTY = msgspec.Raw(b"{}")
_NO_CONTINUES = "a reply with continues to a call without more"


_DICT: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])
_typed: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(reply_type: type[T]) -> msgspec.json.Decoder[T]:
    dec = _typed.get(reply_type)
    if dec is None:
        dec = _typed[reply_type] = msgspec.json.Decoder(reply_type)
    return dec


# What the connection awaits: nothing (between calls), one reply, or replies until one comes
# without `continues`.
_IDLE = 0
_ONE = 1
_MORE = 2


class ConnectionCore:
    """The client side of one connection, without I/O: bytes in, replies out.

    A shell calls `call()` for the frame to send, then, until `next_frame()` has a frame,
    passes what it reads to `feed()` (b"" at the end of the stream), and gives each frame to
    `reply()`. A call whose replies have not all arrived leaves the connection `broken`: that
    is how a cancelled call or an abandoned stream is noticed without the shell's help.
    """

    __slots__ = ("_awaiting", "_error", "_failed", "_frames", "_splitter", "map_error", "path")

    def __init__(
        self, path: str, max_reply_bytes: int, map_error: ReplyMapper = keep_error
    ) -> None:
        self.path = path
        self.map_error = map_error
        self._splitter = FrameSplitter(max_reply_bytes)
        self._frames: deque[bytes] = deque()
        self._error: FrameTooLarge | None = None
        self._awaiting = _IDLE
        self._failed = False

    @property
    def broken(self) -> bool:
        """No call may follow: the connection failed, or a call on it did not finish."""
        return self._failed or self._awaiting != _IDLE

    @property
    def done(self) -> bool:
        """The last reply of the call has arrived."""
        return self._awaiting == _IDLE

    def call(
        self, method: str, parameters: Parameters, *, more: bool = False, oneway: bool = False
    ) -> bytes:
        """The frame of a call; from now on the connection awaits its replies (none if oneway)."""
        if self.broken:
            raise self.map_error(ConnectionFailed(self.path, "connection is broken"))
        frame = encode_call(method, parameters, more=more, oneway=oneway)
        if not oneway:
            self._awaiting = _MORE if more else _ONE
        return frame

    def lost(self, reason: str) -> Exception:
        """The exception for a connection that failed under the shell; it is broken from now."""
        self._failed = True
        return self.map_error(ConnectionFailed(self.path, reason))

    def discard(self) -> None:
        self._failed = True

    def feed(self, chunk: bytes) -> None:
        """Take the bytes read; b"" means the peer closed its end (raises)."""
        if not chunk:
            raise self.lost("connection closed before the reply")
        try:
            self._frames.extend(self._splitter.feed(chunk))
        except FrameTooLarge as exc:
            # The replies before the oversized one are still good: they are read first.
            self._frames.extend(exc.frames)
            self._error = exc

    def next_frame(self) -> bytes | None:
        """A complete frame received and not yet taken, or None: read more and `feed` it."""
        if self._frames:
            return self._frames.popleft()
        if self._error is not None:
            self._failed = True
            raise self.map_error(ProtocolViolation(self._error.reason))
        return None

    def reply(self, frame: bytes) -> msgspec.Raw:
        """The parameters of one reply; an error reply is raised (through `map_error`)."""
        try:
            parameters, continues, error = parse_reply(frame)
        except ProtocolViolation as exc:
            self._failed = True
            raise self.map_error(exc) from None
        if error is not None:  # an error ends the call, the connection goes on
            self._awaiting = _IDLE
            raise self.map_error(error)
        if not continues:
            self._awaiting = _IDLE
        elif self._awaiting != _MORE:
            self._failed = True
            raise self.map_error(ProtocolViolation(_NO_CONTINUES))
        return parameters

    def as_dict(self, raw: msgspec.Raw) -> dict[str, Any]:
        return _as_dict(raw, self.map_error)

    def decode(self, raw: msgspec.Raw, reply_type: type[T]) -> T:
        return _decode(raw, reply_type, self.map_error)

    def decoder(self, reply_type: type[T]) -> Callable[[msgspec.Raw], T]:
        return lambda raw: self.decode(raw, reply_type)


def _as_dict(raw: msgspec.Raw, map_error: ReplyMapper) -> dict[str, Any]:
    """A reply's parameters as a dict; anything but an object is a ProtocolViolation."""
    try:
        return _DICT.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise map_error(ProtocolViolation(f"reply parameters are not an object: {exc}")) from None


def _decode(raw: msgspec.Raw, reply_type: type[T], map_error: ReplyMapper) -> T:
    try:
        return _decoder(reply_type).decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise map_error(
            ProtocolViolation(f"reply does not match {reply_type.__name__}: {exc}")
        ) from None


async def connect_stream(path: str, map_error: ReplyMapper) -> SocketStream:
    """A connected stream to the Unix socket at `path`; a failure is ConnectionFailed, worded."""
    try:
        return await anyio.connect_unix(path)
    except OSError as exc:
        raise map_error(ConnectionFailed(path, _unreachable(path, exc))) from exc


def _unreachable(path: str, exc: OSError) -> str:
    """Why connecting to `path` failed, in words."""
    if isinstance(exc, FileNotFoundError):
        return "no socket there (is the daemon running?)"
    if isinstance(exc, ConnectionRefusedError) and not _is_socket(path):
        return "connection refused: that path is not a socket"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (the socket exists but nothing listens on it)"
    if isinstance(exc, PermissionError):
        closed = _unsearchable_directory(path)
        if closed is not None:
            return f"permission denied: this user may not enter the socket's directory {closed}"
        return "permission denied on the socket"
    return exc.strerror or str(exc)


def _unsearchable_directory(path: str) -> str | None:
    """The outermost directory on the way to `path` this process may not search, if any."""
    parents = list(reversed(Path(path).absolute().parents))
    for directory in parents:
        try:
            if not os.access(directory, os.X_OK):
                return str(directory)
        except OSError:
            return None
    return None


def _is_socket(path: str) -> bool:
    try:
        return Path(path).is_socket() or not Path(path).exists()
    except OSError:
        return True  # cannot tell: keep the usual explanation


class _Shell:
    """What both connection shells share: the core and the socket."""

    def __init__(self, sock: socket.socket, core: ConnectionCore) -> None:
        self._sock = sock
        self._core = core
        self.path = core.path

    @property
    def broken(self) -> bool:
        return self._core.broken

    def stale(self) -> bool:
        """Not fit for a call: broken, or with anything to read (EOF, or an error the server
        sent before it hung up) between calls. poll, not a peeking recv: a socket with a
        timeout would wait that long before the recv."""
        if self._core.broken or self._sock.fileno() < 0:
            return True
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        self._core.discard()
        self._sock.close()

    def lost_while_sending(self, reason: str) -> Exception:
        """The exception for a send that failed: the error the server sent before it hung up,
        when it is there to read (a server may refuse a peer as it connects, PermissionDenied
        or LimitExceeded, and close before the call arrives), else ConnectionFailed."""
        core = self._core
        try:
            while (frame := core.next_frame()) is None:
                # The peer has closed: the socket is readable (data, then EOF), nothing waits.
                core.feed(self._sock.recv(_RECV, socket.MSG_DONTWAIT))
        except Exception:
            return core.lost(reason)  # nothing to read: the hang-up is all there is to say
        try:
            core.reply(frame)
        except Exception as exc:  # the error the server sent (or why its frame makes no sense)
            core.discard()
            return exc
        return core.lost(reason)


# --- async ---------------------------------------------------------------------------------


class AsyncConnection(_Shell):
    """One connection; one call at a time (concurrent callers use `AsyncVarlinkClient`)."""

    def __init__(
        self,
        stream: SocketStream,
        path: str,
        max_reply_bytes: int,
        *,
        map_error: ReplyMapper = keep_error,
    ) -> None:
        super().__init__(
            stream.extra(SocketAttribute.raw_socket),  # noqa: S610
            ConnectionCore(path, max_reply_bytes, map_error),
        )
        self._stream = stream
        self._raw = raw_socket(stream)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        map_error: ReplyMapper = keep_error,
    ) -> AsyncConnection:
        spath = os.fspath(path)
        stream = await connect_stream(spath, map_error)
        return cls(stream, spath, max_reply_bytes, map_error=map_error)

    async def _send(self, frame: bytes) -> None:
        try:
            await send_all(self._stream, self._raw, frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise self.lost_while_sending("connection closed while sending") from exc

    async def _reply(self) -> msgspec.Raw:
        core = self._core
        while (frame := core.next_frame()) is None:
            try:
                chunk = await receive_chunk(self._stream, self._raw, _RECV)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise core.lost("connection closed before the reply") from exc
            core.feed(chunk)
        return core.reply(frame)

    async def call(
        self, method: str, parameters: Parameters = None, *, oneway: bool = False
    ) -> dict[str, Any]:
        """One call; the reply's parameters as a dict ({} for oneway calls)."""
        await self._send(self._core.call(method, parameters, oneway=oneway))
        return {} if oneway else self._core.as_dict(await self._reply())

    async def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        """One call; the reply decoded straight into `reply_type`."""
        await self._send(self._core.call(method, parameters))
        return self._core.decode(await self._reply(), reply_type)

    async def _replies(
        self, method: str, parameters: Parameters, decode: Callable[[msgspec.Raw], T]
    ) -> AsyncGenerator[T, None]:
        await self._send(self._core.call(method, parameters, more=True))
        while not self._core.done:
            yield decode(await self._reply())

    def stream(
        self, method: str, parameters: Parameters = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A `more` call: every reply's parameters, until the last (or an error is raised)."""
        return self._replies(method, parameters, self._core.as_dict)

    def stream_typed(
        self, method: str, parameters: Parameters, reply_type: type[T]
    ) -> AsyncGenerator[T, None]:
        return self._replies(method, parameters, self._core.decoder(reply_type))

    async def aclose(self) -> None:
        self._core.discard()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


# --- blocking ------------------------------------------------------------------------------


class Connection(_Shell):
    """One blocking connection; one call at a time."""

    def __init__(
        self,
        sock: socket.socket,
        path: str,
        max_reply_bytes: int,
        timeout: float | None,
        *,
        map_error: ReplyMapper = keep_error,
    ) -> None:
        super().__init__(sock, ConnectionCore(path, max_reply_bytes, map_error))
        self.timeout = timeout

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        map_error: ReplyMapper = keep_error,
    ) -> Connection:
        spath = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(spath)
        except OSError as exc:
            sock.close()
            reason = (
                f"no answer within {timeout}s"
                if isinstance(exc, TimeoutError)
                else _unreachable(spath, exc)
            )
            raise map_error(ConnectionFailed(spath, reason)) from exc
        return cls(sock, spath, max_reply_bytes, timeout, map_error=map_error)

    def _send(self, frame: bytes) -> None:
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            raise self.lost_while_sending(f"connection closed while sending: {exc}") from exc

    def _reply(self) -> msgspec.Raw:
        core = self._core
        while (frame := core.next_frame()) is None:
            try:
                chunk = self._sock.recv(_RECV)
            except TimeoutError as exc:
                raise core.lost(f"no reply within {self.timeout}s") from exc
            except OSError as exc:
                raise core.lost(f"connection lost: {exc}") from exc
            core.feed(chunk)
        return core.reply(frame)

    def call(
        self, method: str, parameters: Parameters = None, *, oneway: bool = False
    ) -> dict[str, Any]:
        self._send(self._core.call(method, parameters, oneway=oneway))
        return {} if oneway else self._core.as_dict(self._reply())

    def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        self._send(self._core.call(method, parameters))
        return self._core.decode(self._reply(), reply_type)

    def _replies(
        self, method: str, parameters: Parameters, decode: Callable[[msgspec.Raw], T]
    ) -> Generator[T, None, None]:
        self._send(self._core.call(method, parameters, more=True))
        while not self._core.done:
            yield decode(self._reply())

    def stream(self, method: str, parameters: Parameters = None) -> Iterator[dict[str, Any]]:
        return self._replies(method, parameters, self._core.as_dict)

    def stream_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> Iterator[T]:
        return self._replies(method, parameters, self._core.decoder(reply_type))


# --- pools ---------------------------------------------------------------------------------

C = TypeVar("C", AsyncConnection, Connection)
# What `call` returns: the reply (blocking) or an awaitable of it (async); and with `more`, an
# iterator over the replies (blocking) or an awaitable of one (async).
One = TypeVar("One")
Many = TypeVar("Many")


class _Pool(Generic[C, One, Many]):
    """What both clients share: the idle connections, when one may be reused, and `call`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_reply_bytes: int,
        max_idle: int,
        map_error: ReplyMapper,
    ) -> None:
        self.path = os.fspath(path)
        self.max_reply_bytes = max_reply_bytes
        self.max_idle = max_idle
        self.map_error = map_error
        self._idle: list[C] = []
        # Held for list operations only (never across I/O), so tasks can share it too.
        self._lock = threading.Lock()
        self._closed = False

    @overload
    def call(
        self,
        method: str,
        parameters: Parameters = None,
        *,
        more: Literal[False] = False,
        oneway: bool = False,
    ) -> One: ...

    @overload
    def call(self, method: str, parameters: Parameters = None, *, more: Literal[True]) -> Many: ...

    def call(
        self,
        method: str,
        parameters: Parameters = None,
        *,
        more: bool = False,
        oneway: bool = False,
    ) -> One | Many:
        """The reply's parameters; with `more`, an iterator over the replies (see `stream`)."""
        if more:
            return self._call_more(method, parameters)
        return self._call_one(method, parameters, oneway)

    def _call_one(self, method: str, parameters: Parameters, oneway: bool) -> One:
        raise NotImplementedError

    def _call_more(self, method: str, parameters: Parameters) -> Many:
        raise NotImplementedError

    def _take_idle(self) -> C | None:
        """A pooled connection fit for a call, or None (open a new one)."""
        while True:
            with self._lock:
                if self._closed:
                    raise self.map_error(ConnectionFailed(self.path, "the client is closed"))
                conn = self._idle.pop() if self._idle else None
            if conn is None or not conn.stale():
                return conn
            conn.close()

    def _release(self, conn: C) -> None:
        with self._lock:
            if not (conn.broken or self._closed or len(self._idle) >= self.max_idle):
                self._idle.append(conn)
                return
        conn.close()

    def _close_idle(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class AsyncVarlinkClient(
    _Pool[
        AsyncConnection,
        Coroutine[Any, Any, dict[str, Any]],
        Coroutine[Any, Any, AsyncIterator[dict[str, Any]]],
    ]
):
    """Calls over connections to one socket; safe for concurrent tasks.

    Calls with one reply share ONE connection, pipelined (`PipelinedConnection`): concurrent
    tasks do not open a connection each, and the server answers the calls that arrive together
    together. Streams (`more`) each take a connection of the pool, which they hold until they end.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_idle: int = 8,
        map_error: ReplyMapper = keep_error,
    ) -> None:
        super().__init__(path, max_reply_bytes, max_idle, map_error)
        self._pipe: PipelinedConnection | None = None
        self._opening: anyio.Lock | None = None

    async def _pipeline(self) -> PipelinedConnection:
        """The shared connection, opened (again) when there is none fit for a call."""
        pipe = self._pipe
        if pipe is not None and not pipe.stale():
            return pipe
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:  # one caller opens it, the others wait for it
            pipe = self._pipe
            if pipe is None or pipe.stale():
                if self._closed:
                    raise self.map_error(ConnectionFailed(self.path, "the client is closed"))
                if pipe is not None:
                    pipe.close()
                stream = await connect_stream(self.path, self.map_error)
                pipe = self._pipe = PipelinedConnection(
                    stream, self.path, self.max_reply_bytes, self.map_error
                )
        return pipe

    async def _pipelined(
        self, method: str, parameters: Parameters, oneway: bool = False
    ) -> msgspec.Raw:
        """One call on the shared connection: its reply's parameters (`{}` for oneway)."""
        frame = encode_call(method, parameters, oneway=oneway)
        pipe = await self._pipeline()
        reply = await pipe.call(frame, oneway=oneway)
        if reply is None:
            return _EMPTY
        try:
            answer, continues, error = parse_reply(reply)
            if continues:
                raise ProtocolViolation(_NO_CONTINUES)
        except ProtocolViolation as exc:
            pipe.close()  # the order of the replies is in doubt
            raise self.map_error(exc) from None
        if error is not None:
            raise self.map_error(error)
        return answer

    async def __aenter__(self) -> AsyncVarlinkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> AsyncConnection:
        """A connection of its own (not pooled), e.g. for a long `Watch`."""
        return await AsyncConnection.open(
            self.path, max_reply_bytes=self.max_reply_bytes, map_error=self.map_error
        )

    @asynccontextmanager
    async def _lease(self) -> AsyncGenerator[AsyncConnection, None]:
        conn = self._take_idle() or await self.connect()
        try:
            yield conn
        finally:
            self._release(conn)

    async def _call_one(self, method: str, parameters: Parameters, oneway: bool) -> dict[str, Any]:
        raw = await self._pipelined(method, parameters, oneway)
        return {} if oneway else _as_dict(raw, self.map_error)

    async def _call_more(
        self, method: str, parameters: Parameters
    ) -> AsyncIterator[dict[str, Any]]:
        return self.stream(method, parameters)

    async def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        return _decode(await self._pipelined(method, parameters), reply_type, self.map_error)

    def stream(self, method: str, parameters: Parameters = None) -> AsyncIterator[dict[str, Any]]:
        return self._pooled(lambda conn: conn.stream(method, parameters))

    def stream_typed(
        self, method: str, parameters: Parameters, reply_type: type[T]
    ) -> AsyncIterator[T]:
        return self._pooled(lambda conn: conn.stream_typed(method, parameters, reply_type))

    async def _pooled(
        self, start: Callable[[AsyncConnection], AsyncGenerator[T, None]]
    ) -> AsyncIterator[T]:
        async with self._lease() as conn:
            replies = start(conn)
            try:
                async for reply in replies:
                    yield reply
            finally:
                # Closed before the pool takes the connection back, so that its socket is not
                # in use (abandoned midway, the connection is broken and gets closed).
                await replies.aclose()

    async def aclose(self) -> None:
        self._close_idle()
        if self._pipe is not None:
            self._pipe.close()  # at once if idle, else when its last call has its reply


class VarlinkClient(_Pool[Connection, dict[str, Any], Iterator[dict[str, Any]]]):
    """Blocking calls over a pool of connections to one socket; safe for concurrent threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_idle: int = 8,
        map_error: ReplyMapper = keep_error,
    ) -> None:
        super().__init__(path, max_reply_bytes, max_idle, map_error)
        self.timeout = timeout

    def __enter__(self) -> VarlinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Connection:
        """A connection of its own (not pooled)."""
        return Connection.open(
            self.path,
            timeout=self.timeout,
            max_reply_bytes=self.max_reply_bytes,
            map_error=self.map_error,
        )

    @contextmanager
    def _lease(self) -> Generator[Connection, None, None]:
        conn = self._take_idle() or self.connect()
        try:
            yield conn
        finally:
            self._release(conn)

    def _call_one(self, method: str, parameters: Parameters, oneway: bool) -> dict[str, Any]:
        with self._lease() as conn:
            return conn.call(method, parameters, oneway=oneway)

    def _call_more(self, method: str, parameters: Parameters) -> Iterator[dict[str, Any]]:
        return self.stream(method, parameters)

    def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        with self._lease() as conn:
            return conn.call_typed(method, parameters, reply_type)

    def stream(self, method: str, parameters: Parameters = None) -> Iterator[dict[str, Any]]:
        return self._pooled(lambda conn: conn.stream(method, parameters))

    def stream_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> Iterator[T]:
        return self._pooled(lambda conn: conn.stream_typed(method, parameters, reply_type))

    def _pooled(self, start: Callable[[Connection], Iterator[T]]) -> Iterator[T]:
        with self._lease() as conn:
            yield from start(conn)

    def close(self) -> None:
        self._close_idle()
