"""One client connection shared by concurrent callers, their calls pipelined.

Varlink answers the calls of a connection in the order they were sent, so callers need not wait
for each other: each one writes its call at once and is handed the reply in its turn. There is no
reader task (an anyio library call cannot own one): whichever caller is waiting reads for all of
them, hands every reply it splits off to its caller, and when its own has come, passes the
reading on to the next caller still waiting. A caller alone on the connection therefore reads its
own reply with no hand-off at all, and a caller that is woken was woken once, by the reply it
waits for or by its turn to read.

A caller cancelled while it waits leaves its place in the queue: its reply is read and dropped
when it comes, and the connection goes on. A call cut off halfway through its frame (the send
was cancelled or failed) leaves the byte stream unusable: every call in flight fails, and the
connection is `broken`. Streams (`more`) are not pipelined here: a long stream would hold up
every reply behind it, so the pool gives each one a connection of its own.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections import deque

import anyio
from anyio.abc import SocketAttribute, SocketStream

from timelined.varlink.errors import (
    ConnectionFailed,
    ProtocolViolation,
    ReplyMapper,
    VarlinkError,
)
from timelined.varlink.framing import (
    CLIENT_RECEIVE_SIZE,
    FrameSplitter,
    FrameTooLarge,
    raw_socket,
    receive_chunk,
)

__all__ = ["PipelinedConnection"]

_RECV = CLIENT_RECEIVE_SIZE


class _Waiter:
    """One call in flight: its reply frame once read, or why it will never come."""

    __slots__ = ("abandoned", "event", "failure", "frame")

    def __init__(self) -> None:
        self.frame: bytes | None = None
        self.failure: Exception | None = None
        # Made only when the caller has to wait for another caller's read.
        self.event: anyio.Event | None = None
        self.abandoned = False

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()


class PipelinedConnection:
    """A connection on which concurrent callers each send a call and await its reply."""

    def __init__(
        self, stream: SocketStream, path: str, max_reply_bytes: int, map_error: ReplyMapper
    ) -> None:
        self.path = path
        self.map_error = map_error
        self._stream = stream
        self._sock: socket.socket = stream.extra(SocketAttribute.raw_socket)  # noqa: S610
        self._raw = raw_socket(stream)
        self._splitter = FrameSplitter(max_reply_bytes)
        self._waiters: deque[_Waiter] = deque()
        self._reading = False
        self._backlog: bytearray | None = None  # bytes a blocked send has yet to write
        self._failure: Exception | None = None
        self._closing = False
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    @property
    def broken(self) -> bool:
        return self._failure is not None or self._closing

    def stale(self) -> bool:
        """Not fit for another call: broken, or, with no call waiting for its reply, something
        to read (EOF, an error the server sent before it hung up, or the reply of a cancelled
        call, after which the server may have closed the connection as idle)."""
        if self.broken or self._sock.fileno() < 0:
            return True
        return self._nobody_waits() and bool(self._poller.poll(0))

    async def call(self, frame: bytes, *, oneway: bool = False) -> bytes | None:
        """Send one encoded call; its reply frame (None for a oneway call)."""
        if self._failure is not None:
            raise self._failure
        if oneway:
            await self._send(frame)
            return None
        waiter = _Waiter()
        self._waiters.append(waiter)  # before the send: the replies come in this order
        try:
            try:
                await self._send(frame)
            except Exception:
                if waiter.frame is None:
                    raise
                # The server answered (a refusal at accept) before it hung up: that answer is
                # this call's outcome, not the hang-up that the send met.
            while waiter.frame is None:
                if waiter.failure is not None:
                    raise waiter.failure
                if self._reading:
                    if waiter.event is None or waiter.event.is_set():
                        waiter.event = anyio.Event()
                    await waiter.event.wait()
                else:
                    await self._read_for(waiter)
        except BaseException:
            if waiter.frame is None:
                waiter.abandoned = True  # its reply, if it comes, is dropped
                self._pass_reading()
            raise
        finally:
            if self._closing and self._nobody_waits():
                self._close_now()
        return waiter.frame

    async def _send(self, frame: bytes) -> None:
        if self._backlog is not None:  # another caller's send is waiting: it writes ours too
            self._backlog += frame
            return
        try:
            sent = self._sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._lost_while_sending() from exc
        if sent == len(frame):
            return
        backlog = self._backlog = bytearray(memoryview(frame)[sent:])
        try:
            while backlog:
                await anyio.wait_writable(self._sock)
                try:
                    del backlog[: self._sock.send(backlog)]
                except BlockingIOError:
                    continue
        except BaseException as exc:
            # Cut off inside a frame: nothing after it can be framed any more.
            failure = (
                self._lost_while_sending()
                if isinstance(exc, OSError)
                else self._fail("connection closed while sending")
            )
            if isinstance(exc, OSError):
                raise failure from exc
            raise
        finally:
            self._backlog = None

    def _lost_while_sending(self) -> Exception:
        """The peer hung up under a send: first hand out the replies it sent before (a server
        may refuse a peer as it connects, PermissionDenied or LimitExceeded, and close before
        the call arrives), then fail the calls left. Only while nobody reads: a reader takes
        those replies itself."""
        if not self._reading:
            # Stops at nothing (more) to read, or at what makes no sense (that fails the rest).
            with contextlib.suppress(Exception):
                while chunk := self._sock.recv(_RECV, socket.MSG_DONTWAIT):
                    self._hand_out(self._splitter.feed(chunk))
        return self._fail("connection closed while sending")

    async def _read_for(self, waiter: _Waiter) -> None:
        """Read, handing out every reply in order, until `waiter`'s has come."""
        self._reading = True
        try:
            while waiter.frame is None and waiter.failure is None:
                try:
                    chunk = await receive_chunk(self._stream, self._raw, _RECV)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                    raise self._fail("connection closed before the reply") from exc
                if not chunk:
                    raise self._fail("connection closed before the reply")
                try:
                    frames = self._splitter.feed(chunk)
                except FrameTooLarge as exc:
                    self._hand_out(exc.frames)
                    raise self._fail_with(ProtocolViolation(exc.reason)) from None
                self._hand_out(frames)
        finally:
            self._reading = False
        self._pass_reading()

    def _hand_out(self, frames: list[bytes]) -> None:
        waiters = self._waiters
        for frame in frames:
            if not waiters:
                raise self._fail_with(ProtocolViolation("a reply to no call"))
            waiter = waiters.popleft()
            waiter.frame = frame
            waiter.wake()

    def _pass_reading(self) -> None:
        """Wake the first caller still waiting, to read for the rest (nobody reads now)."""
        if self._reading:
            return
        for waiter in self._waiters:
            if not waiter.abandoned:
                waiter.wake()
                return

    def _fail(self, reason: str) -> Exception:
        return self._fail_with(ConnectionFailed(self.path, reason))

    def _fail_with(self, error: VarlinkError) -> Exception:
        """Fail every call in flight with `error`; the connection is broken from now."""
        if self._failure is None:
            self._failure = self.map_error(error)
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.failure = self._failure
            waiter.wake()
        return self._failure

    def close(self) -> None:
        """Close now if no call is in flight, else once the last one has its reply."""
        self._closing = True
        if self._nobody_waits():
            self._close_now()

    def _nobody_waits(self) -> bool:
        """No call waits for a reply: the replies still to come are for cancelled callers."""
        return all(waiter.abandoned for waiter in self._waiters)

    def _close_now(self) -> None:
        if self._failure is None:
            self._failure = self.map_error(ConnectionFailed(self.path, "the connection is closed"))
        if self._sock.fileno() >= 0:
            self._poller.unregister(self._sock)
        self._sock.close()
