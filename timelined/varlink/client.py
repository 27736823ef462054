"""Minimal Varlink client transports: async (anyio) and blocking (plain sockets).

Both keep a small pool of open connections, so consecutive calls reuse one, and concurrent
callers (tasks or threads) each get their own. A call that fails halfway (the peer hung up, the
caller was cancelled, a stream was abandoned) discards its connection, because the replies on
it can no longer be matched to calls.

Failures are raised as:
- `VarlinkErrorReply(name, parameters)` — the service answered with a named error;
- `timelined.errors.DaemonUnavailable` — no socket, nobody listening, permission refused on the
  socket, or the connection closed before the reply;
- `timelined.errors.ProtocolError` — the reply was not a Varlink message (or too large).
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import anyio
import msgspec
from anyio.abc import SocketAttribute, SocketStream

from timelined.errors import DaemonUnavailable, ProtocolError
from timelined.varlink.framing import FrameError, FrameReader, FrameSplitter, send_all
from timelined.varlink.protocol import VarlinkErrorReply, encode_call

__all__ = [
    "AsyncConnection",
    "AsyncVarlinkClient",
    "Connection",
    "Parameters",
    "VarlinkClient",
    "VarlinkErrorReply",
]

T = TypeVar("T")
Parameters = Mapping[str, Any] | msgspec.Struct | None

DEFAULT_MAX_REPLY_BYTES = 256 * 1024 * 1024
_RECV = 256 * 1024
_EMPTY = msgspec.Raw(b"{}")


class _Reply(msgspec.Struct):
    # The protocol declares a reply as (parameters: ?object, continues: ?bool, error: ?string):
    # null is as good as absent in each.
    parameters: msgspec.Raw = _EMPTY
    continues: bool | None = False
    error: str | None = None


_REPLY = msgspec.json.Decoder(_Reply)
_DICT: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])
_typed: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(reply_type: type[T]) -> msgspec.json.Decoder[T]:
    dec = _typed.get(reply_type)
    if dec is None:
        dec = _typed[reply_type] = msgspec.json.Decoder(reply_type)
    return dec


def _parse(frame: bytes) -> tuple[msgspec.Raw, bool]:
    """(parameters, continues) of a reply; raises VarlinkErrorReply on an error reply."""
    try:
        reply = _REPLY.decode(frame)
        parameters = _EMPTY if bytes(reply.parameters) == b"null" else reply.parameters
        if reply.error is not None:
            params = _DICT.decode(parameters)
            raise VarlinkErrorReply(reply.error, params)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"reply is not a Varlink message: {exc}") from None
    return parameters, bool(reply.continues)


def _decode(raw: msgspec.Raw, reply_type: type[T]) -> T:
    try:
        return _decoder(reply_type).decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"reply does not match {reply_type.__name__}: {exc}") from None


def _as_dict(raw: msgspec.Raw) -> dict[str, Any]:
    """A reply's parameters as a dict; anything but an object is a ProtocolError."""
    try:
        return _DICT.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"reply parameters are not an object: {exc}") from None


def _is_socket(path: str) -> bool:
    try:
        return Path(path).is_socket() or not Path(path).exists()
    except OSError:
        return True  # cannot tell: keep the usual explanation


def _unavailable(path: str, exc: OSError) -> DaemonUnavailable:
    if isinstance(exc, FileNotFoundError):
        reason = "no socket there (is the daemon running?)"
    elif isinstance(exc, ConnectionRefusedError) and not _is_socket(path):
        reason = "connection refused: that path is not a socket"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused (the socket exists but nothing listens on it)"
    elif isinstance(exc, PermissionError):
        reason = "permission denied on the socket"
    else:
        reason = exc.strerror or str(exc)
    return DaemonUnavailable(path, reason)


def _is_stale(sock: socket.socket) -> bool:
    """A pooled connection with anything to read (EOF, or an error the server sent before it
    hung up) is not in a clean state between calls. poll, not a peeking recv: a socket with a
    timeout would wait that long before the recv."""
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


# --- async ---------------------------------------------------------------------------------


class AsyncConnection:
    """One connection; one call at a time (concurrent callers use `AsyncVarlinkClient`)."""

    def __init__(self, stream: SocketStream, path: str, max_reply_bytes: int) -> None:
        self._stream = stream
        self._sock: socket.socket = stream.extra(SocketAttribute.raw_socket)  # noqa: S610
        self._reader = FrameReader(stream, max_reply_bytes)
        self._pending: deque[bytes] = deque()
        self.path = path
        self.broken = False

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    ) -> AsyncConnection:
        spath = os.fspath(path)
        try:
            stream = await anyio.connect_unix(spath)
        except OSError as exc:
            raise _unavailable(spath, exc) from exc
        return cls(stream, spath, max_reply_bytes)

    def stale(self) -> bool:
        return self.broken or _is_stale(self._sock)

    async def _send(self, frame: bytes) -> None:
        try:
            await send_all(self._stream, self._sock, frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise DaemonUnavailable(self.path, "connection closed while sending") from exc

    async def _frame(self) -> bytes:
        if self._pending:
            return self._pending.popleft()
        try:
            frames = await self._reader.receive_frames()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
            self.broken = True
            raise DaemonUnavailable(self.path, "connection closed before the reply") from e
        except FrameError as exc:
            self.broken = True
            raise ProtocolError(exc.reason) from None
        self._pending.extend(frames[1:])
        return frames[0]

    async def _roundtrip(self, frame: bytes) -> msgspec.Raw:
        if self.broken:
            raise DaemonUnavailable(self.path, "connection is broken")
        ok = False
        try:
            await self._send(frame)
            params, continues = _parse(await self._frame())
            if continues:
                raise ProtocolError("a reply with continues to a call without more")
            ok = True
            return params
        except VarlinkErrorReply:
            ok = True
            raise
        finally:
            if not ok:
                self.broken = True

    async def call(
        self, method: str, parameters: Parameters = None, *, oneway: bool = False
    ) -> dict[str, Any]:
        """One call; the reply's parameters as a dict ({} for oneway calls)."""
        if oneway:
            await self._send(encode_call(method, parameters, oneway=True))
            return {}
        return _as_dict(await self._roundtrip(encode_call(method, parameters)))

    async def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        """One call; the reply decoded straight into `reply_type`."""
        return _decode(await self._roundtrip(encode_call(method, parameters)), reply_type)

    async def _stream_raw(
        self, method: str, parameters: Parameters, decode: Callable[[msgspec.Raw], T]
    ) -> AsyncGenerator[T, None]:
        # One generator level (decoding included), so that its `finally` runs however the
        # stream ends: closed midway, a decode error, or cancellation.
        if self.broken:
            raise DaemonUnavailable(self.path, "connection is broken")
        done = False
        try:
            await self._send(encode_call(method, parameters, more=True))
            while True:
                try:
                    params, continues = _parse(await self._frame())
                except VarlinkErrorReply:
                    done = True
                    raise
                value = decode(params)
                if not continues:
                    done = True
                yield value
                if done:
                    return
        finally:
            if not done:  # abandoned mid-stream: the rest of it would confuse the next call
                self.broken = True

    def stream(
        self, method: str, parameters: Parameters = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A `more` call: every reply's parameters, until the last (or an error is raised)."""
        return self._stream_raw(method, parameters, _as_dict)

    def stream_typed(
        self, method: str, parameters: Parameters, reply_type: type[T]
    ) -> AsyncGenerator[T, None]:
        return self._stream_raw(method, parameters, lambda raw: _decode(raw, reply_type))

    def close(self) -> None:
        self.broken = True
        self._sock.close()

    async def aclose(self) -> None:
        self.broken = True
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


class AsyncVarlinkClient:
    """Calls over a pool of connections to one socket; safe for concurrent tasks."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_idle: int = 8,
    ) -> None:
        self.path = os.fspath(path)
        self.max_reply_bytes = max_reply_bytes
        self.max_idle = max_idle
        self._idle: list[AsyncConnection] = []
        self._closed = False

    async def __aenter__(self) -> AsyncVarlinkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> AsyncConnection:
        """A connection of its own (not pooled), e.g. for a long `Watch`."""
        return await AsyncConnection.open(self.path, max_reply_bytes=self.max_reply_bytes)

    async def _acquire(self) -> AsyncConnection:
        if self._closed:
            raise DaemonUnavailable(self.path, "the client is closed")
        while self._idle:
            conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.close()
        return await self.connect()

    def _release(self, conn: AsyncConnection) -> None:
        if conn.broken or self._closed or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    @overload
    async def call(
        self,
        method: str,
        parameters: Parameters = None,
        *,
        more: Literal[False] = False,
        oneway: bool = False,
    ) -> dict[str, Any]: ...

    @overload
    async def call(
        self, method: str, parameters: Parameters = None, *, more: Literal[True]
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def call(
        self,
        method: str,
        parameters: Parameters = None,
        *,
        more: bool = False,
        oneway: bool = False,
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """The reply's parameters; with `more`, an iterator over the replies (see `stream`)."""
        if more:
            return self.stream(method, parameters)
        conn = await self._acquire()
        try:
            return await conn.call(method, parameters, oneway=oneway)
        finally:
            self._release(conn)

    async def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        conn = await self._acquire()
        try:
            return await conn.call_typed(method, parameters, reply_type)
        finally:
            self._release(conn)

    async def stream(
        self, method: str, parameters: Parameters = None
    ) -> AsyncIterator[dict[str, Any]]:
        conn = await self._acquire()
        replies = conn.stream(method, parameters)
        try:
            async for reply in replies:
                yield reply
        finally:
            # Close the connection's stream first: abandoned midway, it marks the connection
            # broken, so that the pool does not hand out a connection still streaming.
            await replies.aclose()
            self._release(conn)

    async def stream_typed(
        self, method: str, parameters: Parameters, reply_type: type[T]
    ) -> AsyncIterator[T]:
        conn = await self._acquire()
        replies = conn.stream_typed(method, parameters, reply_type)
        try:
            async for reply in replies:
                yield reply
        finally:
            await replies.aclose()  # as in `stream`
            self._release(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


# --- blocking ------------------------------------------------------------------------------


class Connection:
    """One blocking connection; one call at a time."""

    def __init__(
        self, sock: socket.socket, path: str, max_reply_bytes: int, timeout: float | None
    ) -> None:
        self._sock = sock
        self._splitter = FrameSplitter(max_reply_bytes)
        self._pending: deque[bytes] = deque()
        self.path = path
        self.timeout = timeout
        self.broken = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> Connection:
        spath = os.fspath(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(spath)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise DaemonUnavailable(spath, f"no answer within {timeout}s") from exc
            raise _unavailable(spath, exc) from exc
        return cls(sock, spath, max_reply_bytes, timeout)

    def stale(self) -> bool:
        return self.broken or _is_stale(self._sock)

    def _send(self, frame: bytes) -> None:
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            self.broken = True
            raise DaemonUnavailable(self.path, f"connection closed while sending: {exc}") from exc

    def _frame(self) -> bytes:
        while not self._pending:
            try:
                chunk = self._sock.recv(_RECV)
            except TimeoutError as exc:
                self.broken = True
                raise DaemonUnavailable(self.path, f"no reply within {self.timeout}s") from exc
            except OSError as exc:
                self.broken = True
                raise DaemonUnavailable(self.path, f"connection lost: {exc}") from exc
            if not chunk:
                self.broken = True
                raise DaemonUnavailable(self.path, "connection closed before the reply")
            try:
                self._pending.extend(self._splitter.feed(chunk))
            except FrameError as exc:
                self.broken = True
                raise ProtocolError(exc.reason) from None
        return self._pending.popleft()

    def _roundtrip(self, frame: bytes) -> msgspec.Raw:
        if self.broken:
            raise DaemonUnavailable(self.path, "connection is broken")
        ok = False
        try:
            self._send(frame)
            params, continues = _parse(self._frame())
            if continues:
                raise ProtocolError("a reply with continues to a call without more")
            ok = True
            return params
        except VarlinkErrorReply:
            ok = True
            raise
        finally:
            if not ok:
                self.broken = True

    def call(
        self, method: str, parameters: Parameters = None, *, oneway: bool = False
    ) -> dict[str, Any]:
        if oneway:
            self._send(encode_call(method, parameters, oneway=True))
            return {}
        return _as_dict(self._roundtrip(encode_call(method, parameters)))

    def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        return _decode(self._roundtrip(encode_call(method, parameters)), reply_type)

    def _stream_raw(self, method: str, parameters: Parameters) -> Iterator[msgspec.Raw]:
        if self.broken:
            raise DaemonUnavailable(self.path, "connection is broken")
        done = False
        try:
            self._send(encode_call(method, parameters, more=True))
            while True:
                try:
                    params, continues = _parse(self._frame())
                except VarlinkErrorReply:
                    done = True
                    raise
                if not continues:
                    done = True
                yield params
                if done:
                    return
        finally:
            if not done:
                self.broken = True

    def stream(self, method: str, parameters: Parameters = None) -> Iterator[dict[str, Any]]:
        for raw in self._stream_raw(method, parameters):
            yield _as_dict(raw)

    def stream_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> Iterator[T]:
        for raw in self._stream_raw(method, parameters):
            yield _decode(raw, reply_type)

    def close(self) -> None:
        self.broken = True
        self._sock.close()


class VarlinkClient:
    """Blocking calls over a pool of connections to one socket; safe for concurrent threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_idle: int = 8,
    ) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> VarlinkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Connection:
        """A connection of its own (not pooled)."""
        return Connection.open(
            self.path, timeout=self.timeout, max_reply_bytes=self.max_reply_bytes
        )

    def _acquire(self) -> Connection:
        while True:
            with self._lock:
                if self._closed:
                    raise DaemonUnavailable(self.path, "the client is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if not conn.stale():
                return conn
            conn.close()

    def _release(self, conn: Connection) -> None:
        with self._lock:
            if not (conn.broken or self._closed or len(self._idle) >= self.max_idle):
                self._idle.append(conn)
                return
        conn.close()

    @overload
    def call(
        self,
        method: str,
        parameters: Parameters = None,
        *,
        more: Literal[False] = False,
        oneway: bool = False,
    ) -> dict[str, Any]: ...

    @overload
    def call(
        self, method: str, parameters: Parameters = None, *, more: Literal[True]
    ) -> Iterator[dict[str, Any]]: ...

    def call(
        self,
        method: str,
        parameters: Parameters = None,
        *,
        more: bool = False,
        oneway: bool = False,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """The reply's parameters; with `more`, an iterator over the replies (see `stream`)."""
        if more:
            return self.stream(method, parameters)
        conn = self._acquire()
        try:
            return conn.call(method, parameters, oneway=oneway)
        finally:
            self._release(conn)

    def call_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> T:
        conn = self._acquire()
        try:
            return conn.call_typed(method, parameters, reply_type)
        finally:
            self._release(conn)

    def stream(self, method: str, parameters: Parameters = None) -> Iterator[dict[str, Any]]:
        conn = self._acquire()
        try:
            yield from conn.stream(method, parameters)
        finally:
            self._release(conn)

    def stream_typed(self, method: str, parameters: Parameters, reply_type: type[T]) -> Iterator[T]:
        conn = self._acquire()
        try:
            yield from conn.stream_typed(method, parameters, reply_type)
        finally:
            self._release(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
