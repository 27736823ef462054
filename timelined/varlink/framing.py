"""NUL-terminated Varlink frames over a byte stream, with a hard size limit.

A Varlink message is one JSON object followed by a NUL byte. `FrameSplitter` is the sans-I/O
part (bytes in, complete frames out) shared by the server, the async client and the blocking
client; `FrameReader` drives it from an anyio byte stream.

The limit is enforced while a frame is still arriving: once a frame's bytes exceed
`max_message_bytes` the splitter stops accepting input and reports `FrameTooLarge`, so a peer
sending 10 GB without a NUL costs at most one read chunk beyond the limit, never the rest.
"""

from __future__ import annotations

import re
import socket

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream, SocketAttribute, SocketStream

from timelined.varlink.budget import ByteBudget

__all__ = [
    "CALL_DECODER",
    "CLIENT_RECEIVE_SIZE",
    "DEFAULT_RECEIVE_SIZE",
    "CallMessage",
    "FrameError",
    "FrameReader",
    "FrameSplitter",
    "FrameTooLarge",
    "IncompleteFrame",
    "MalformedMessage",
    "ReceiveBuffer",
    "decode_call",
    "raw_socket",
    "receive_chunk",
    "send_all",
    "send_at_once",
    "send_rest",
]

DEFAULT_RECEIVE_SIZE = 256 * 1024
# A client's read size: below glibc's mmap threshold (128 KiB by default), so that the object
# `sock.recv(n)` allocates before it reads comes from the heap; one of 256 KiB was an mmap, two
# page faults and a munmap per read of a small reply (~17 µs of kernel time, docs/performance.md).
# A client cannot share one `ReceiveBuffer` as the server does: its connections may be used
# from several threads.
CLIENT_RECEIVE_SIZE = 64 * 1024
# An incomplete frame counts in the shared budget from this size up (below, every connection
# may hold one; counting each small read would cost the common case).
CHARGED_FROM = 256 * 1024


class FrameError(Exception):
    """A frame the protocol cannot accept; the connection cannot continue after it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLarge(FrameError):
    """A frame grew past the limit; `size` is how many of its bytes were seen (> `maximum`).

    `frames` holds the good frames that came before it in the same chunk, so that a reader can
    still answer them, in order, before it reports the error.
    """

    def __init__(
        self,
        size: int,
        maximum: int,
        frames: list[bytes] | None = None,
        limit: str = "max_message_bytes",
    ) -> None:
        if limit == "max_message_bytes":
            reason = f"message of at least {size} bytes exceeds the limit of {maximum}"
        else:  # a buffer budget: `size` is what would be held with this frame's bytes
            reason = f"{limit}: {size} bytes > {maximum}"
        super().__init__(reason)
        self.size = size
        self.maximum = maximum
        self.frames: list[bytes] = frames or []
        self.limit = limit  # which limit: the frame's own, or the daemon-wide buffer budget


class IncompleteFrame(FrameError):
    """The stream ended in the middle of a frame."""


class MalformedMessage(FrameError):
    """A complete frame that is not a Varlink message (bad JSON, not an object, bad fields)."""


_EMPTY_PARAMETERS = msgspec.Raw(b"{}")


class CallMessage(msgspec.Struct, frozen=True):
    """A call as sent by a client; `parameters` stays raw so that it is decoded exactly once.

    The flags are `?bool` in the protocol's own definition of a call: null is allowed and,
    like absence, means false (so test them for truth, not for `is False`).
    """

    method: str
    parameters: msgspec.Raw = _EMPTY_PARAMETERS
    more: bool | None = False
    oneway: bool | None = False
    upgrade: bool | None = False


# The server's read callback decodes with it directly and calls `decode_call` (the same decode
# again) only for a frame it refused, to name what is wrong.
CALL_DECODER = msgspec.json.Decoder(CallMessage)


# A high surrogate escape not followed by a low one (`"\ud800"`): msgspec reports it as
# "Input data was truncated", the wrong reason for a whole frame.
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])")
_TRUNCATED = "Input data was truncated"


def json_problem(exc: Exception, data: bytes | memoryview | msgspec.Raw) -> str:
    """What is wrong with JSON that msgspec refused, for the error a peer reads. Called only
    on the error path: the search costs nothing to a valid call."""
    text = str(exc)
    if text == _TRUNCATED and _LONE_SURROGATE.search(bytes(data)):
        return "malformed JSON: invalid string: a lone UTF-16 surrogate escape (\\ud800-\\udbff)"
    return f"malformed JSON: {text}"


def decode_call(frame: bytes) -> CallMessage:
    """Decode one frame as a call; anything else raises MalformedMessage with a reason."""
    try:
        return CALL_DECODER.decode(frame)
    except msgspec.ValidationError as exc:
        # Valid JSON that is not a call: `[1]`, `"x"`, a missing or non-string method.
        raise MalformedMessage(f"not a Varlink call: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # A NUL inside a JSON string ends the frame early, so it lands here as truncated JSON.
        raise MalformedMessage(json_problem(exc, frame)) from None
    except RecursionError:
        # Thousands of nested arrays or objects: msgspec stops at Python's recursion limit.
        raise MalformedMessage("malformed JSON: nested too deeply") from None


class ReceiveBuffer:
    """One read buffer, allocated once and reused for every read of the connections it serves.

    `sock.recv(256 KiB)` allocates a 256 KiB bytes object for each read, however little came:
    past glibc's mmap threshold, so each read of a ~500-byte call paid an mmap, two page faults,
    an mremap and a munmap (measured: ~19 µs of kernel time per read, against ~2.5 µs for the
    read itself). `recv_into` this buffer and a copy of what came is the same read without them.

    Not thread-safe, and the bytes must be copied out before the next read anywhere: one per
    event loop (the server's), read and copied with no await in between.
    """

    __slots__ = ("buffer", "view")

    def __init__(self, size: int = DEFAULT_RECEIVE_SIZE) -> None:
        # Public for the server's read callback, which reads into them without a call between.
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)

    @property
    def size(self) -> int:
        return len(self.buffer)

    def recv(self, sock: socket.socket) -> bytes:
        """What one `sock.recv(self.size)` would return (b"" at the end of the stream); raises
        what it would raise (BlockingIOError when nothing is there)."""
        n = sock.recv_into(self.buffer)
        return bytes(self.view[:n])


class FrameSplitter:
    """Sans-I/O splitter: `feed(chunk)` returns the frames the chunk completed, in order."""

    __slots__ = ("_partial", "max_message_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._partial = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._partial)

    def drop_partial(self) -> None:
        """Forget the incomplete frame (the connection will be closed)."""
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Split `chunk`; raises FrameTooLarge (with the good frames before it) once any frame
        exceeds the limit; the splitter is unusable after that."""
        limit = self.max_message_bytes
        parts = chunk.split(b"\0")
        tail = parts.pop()
        if not parts:
            self._partial += chunk
            if len(self._partial) > limit:
                raise self._too_large(len(self._partial), [])
            return []
        if self._partial:
            self._partial += parts[0]
            parts[0] = bytes(self._partial)
            self._partial = bytearray(tail)
        elif tail:  # else no frame is pending before or after: nothing to make
            self._partial = bytearray(tail)
        # The happy path: a chunk no longer than the limit cannot hold an oversized frame.
        if len(chunk) > limit or len(parts[0]) > limit:
            for i, frame in enumerate(parts):
                if len(frame) > limit:
                    raise self._too_large(len(frame), parts[:i])
            if len(self._partial) > limit:
                raise self._too_large(len(self._partial), parts)
        return parts

    def _too_large(self, size: int, frames: list[bytes]) -> FrameTooLarge:
        # The splitter is done: free the oversized frame's bytes now, not when the connection
        # object goes (its last reply may linger for a second, and an error kept with its
        # traceback can hold the connection until a garbage collection).
        self.drop_partial()
        return FrameTooLarge(size, self.max_message_bytes, frames)


class FrameReader:
    """Reads complete frames from an anyio byte stream.

    `receive_frames()` returns every frame that is complete (at least one), so pipelined calls
    that arrived in one read are handled as one batch. `fill()` reads one chunk into the
    pending frames without returning them; the server uses it to notice a peer that hangs up
    during a long stream while still keeping its pipelined calls for later.

    On a socket stream it reads the raw non-blocking socket directly and waits with
    `anyio.wait_readable` only when nothing is there. Unlike a pending stream `receive`, such a
    wait can be cancelled cleanly (the server cancels one whenever a stream ends), and no read
    is ever cancelled halfway, so no data is lost to a cancellation.
    """

    __slots__ = (
        "_budget",
        "_charged",
        "_error",
        "_frames",
        "_into",
        "_owner",
        "_receive_size",
        "_sock",
        "_splitter",
        "_stream",
    )

    def __init__(
        self,
        stream: ByteReceiveStream,
        max_message_bytes: int,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        budget: ByteBudget | None = None,
        into: ReceiveBuffer | None = None,
        owner: int | None = None,
    ) -> None:
        self._stream = stream
        self._sock = raw_socket(stream)
        self._splitter = FrameSplitter(max_message_bytes)
        self._receive_size = into.size if into is not None else receive_size
        self._into = into  # shared with the other connections of the loop (see ReceiveBuffer)
        self._frames: list[bytes] = []
        self._error: FrameError | None = None
        # A large frame still arriving counts in the shared `budget` (a daemon-wide cap): past
        # it the frame is refused (LimitReached naming max_buffered_bytes) instead of growing.
        self._budget = budget
        self._owner = owner  # the peer's uid: its frames count in its share of the budget
        self._charged = 0

    @property
    def max_message_bytes(self) -> int:
        return self._splitter.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int) -> None:
        self._splitter.max_message_bytes = value

    @property
    def pending_bytes(self) -> int:
        """Bytes held in complete-but-unreturned frames and in the partial frame."""
        return sum(len(f) for f in self._frames) + self._splitter.buffered

    @property
    def at_eof(self) -> bool:
        """The peer shut its sending side inside a frame (the error waiting is IncompleteFrame)."""
        return isinstance(self._error, IncompleteFrame)

    @property
    def failed(self) -> bool:
        """A FrameError is waiting to be raised once the frames before it are taken."""
        return self._error is not None

    def split(self, chunk: bytes) -> list[bytes]:
        """`feed(chunk)` then `take_frames()` (`chunk` non-empty, as for `feed`), in one step: a
        chunk that holds only whole frames, with nothing pending before it and no longer than
        the limit (the common read of small calls), is split at once, without the splitter's
        bookkeeping."""
        splitter = self._splitter
        if (
            chunk[-1] == 0
            and not splitter._partial
            and not self._frames
            and self._error is None
            and len(chunk) <= splitter.max_message_bytes
        ):
            frames = chunk.split(b"\0")
            frames.pop()  # the empty rest after the last NUL
            return frames
        self.feed(chunk)
        return self.take_frames()

    def take_frames(self) -> list[bytes]:
        """The complete frames already buffered (possibly none), without reading."""
        frames = self._frames
        self._frames = []
        return frames

    def put_back(self, frames: list[bytes]) -> None:
        """Return frames taken but not handled, to be taken again first."""
        if frames:
            self._frames = frames + self._frames

    async def receive_frames(self) -> list[bytes]:
        """At least one complete frame; raises FrameError or anyio.EndOfStream at a clean end."""
        if self._frames:
            return self.take_frames()
        while True:
            if self._error is not None:
                raise self._error
            await self.fill()
            if self._frames:
                return self.take_frames()

    async def fill(self) -> None:
        """Read one chunk into the pending frames; a FrameError is kept for `receive_frames`.

        Raises anyio.EndOfStream at a clean end, BrokenResourceError when the peer reset.
        """
        if self._error is not None:
            return
        chunk = await receive_chunk(self._stream, self._sock, self._receive_size, self._into)
        if not chunk:
            if self._splitter.buffered:
                self._error = IncompleteFrame(
                    f"connection closed inside a frame ({self._splitter.buffered} bytes)"
                )
                return
            raise anyio.EndOfStream
        self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Split a non-empty chunk read elsewhere (the server's read callback) into the
        pending frames; a FrameError is kept for `receive_frames`, as in `fill`."""
        if self._error is not None:
            return
        try:
            frames = self._splitter.feed(chunk)
        except FrameTooLarge as exc:
            self._frames.extend(exc.frames)
            exc.frames = []
            self._error = exc
            self.release()
            return
        if self._frames:
            self._frames.extend(frames)
        else:
            self._frames = frames
        # Only a partial frame of CHARGED_FROM bytes or more counts: the common read (whole
        # small calls, the last one ending the chunk) skips the budget's arithmetic.
        if self._budget is not None and (
            self._charged or (chunk[-1] != 0 and self._splitter.buffered >= CHARGED_FROM)
        ):
            self._charge(self._budget)

    def _charge(self, budget: ByteBudget) -> None:
        held = self._splitter.buffered
        want = held if held >= CHARGED_FROM else 0
        if want > self._charged:
            more = want - self._charged
            if not budget.try_take(more, self._owner):
                limit, size, maximum = budget.refusal(more, self._owner)
                self._error = FrameTooLarge(size, maximum, limit=limit)
                self.release()
                return
        elif want < self._charged:
            budget.give(self._charged - want, self._owner)
        self._charged = want

    def release(self) -> None:
        """Give back what the incomplete frame counted in the budget (the connection ends)."""
        self._splitter.drop_partial()
        if self._budget is not None and self._charged:
            self._budget.give(self._charged, self._owner)
        self._charged = 0


def raw_socket(stream: ByteReceiveStream) -> socket.socket | None:
    """The non-blocking socket under an anyio socket stream, to read and write it directly."""
    if isinstance(stream, SocketStream):
        sock: socket.socket | None = stream.extra(SocketAttribute.raw_socket, None)  # noqa: S610
        if sock is not None and sock.gettimeout() == 0.0:
            return sock
    return None


async def receive_chunk(
    stream: ByteReceiveStream,
    sock: socket.socket | None,
    size: int,
    into: ReceiveBuffer | None = None,
) -> bytes:
    """Up to `size` bytes, b"" at the end of the stream; straight from `sock` when given (see
    `raw_socket`), through `into` when given (then up to its size). Raises BrokenResourceError
    when the peer reset, ClosedResourceError when the socket was closed here."""
    if sock is None:
        try:
            return await stream.receive(size)
        except anyio.EndOfStream:
            return b""
    # Yield first: it keeps a peer that keeps its socket full from starving the others, and
    # gives a peer that is about to send the round to do so, so the read below usually finds
    # data without registering a wait (measured: ~1.5x calls/s on one connection). Nothing has
    # been read yet, so a cancellation here loses nothing.
    await anyio.lowlevel.checkpoint()
    while True:
        try:
            return sock.recv(size) if into is None else into.recv(sock)
        except BlockingIOError:
            await anyio.wait_readable(sock)
        except OSError as exc:
            raise _broken(sock, exc) from exc


async def send_all(
    stream: ByteSendStream,
    sock: socket.socket | None,
    data: bytes,
    timeout_s: float | None = None,
) -> None:
    """Write `data`: straight to the non-blocking socket when it takes it all (no loop round),
    else wait for the socket to drain, at most `timeout_s` (then BrokenResourceError: a peer
    that does not read its replies only ever holds up itself, and not forever).

    Waits use `anyio.wait_writable`, which can be cancelled cleanly, unlike a pending stream
    `send` on anyio's raw-socket streams.
    """
    if sock is None:
        with anyio.fail_after(timeout_s):
            await stream.send(data)
        return
    sent = send_at_once(sock, data)
    if sent < len(data):
        await send_rest(sock, memoryview(data)[sent:], timeout_s)


def send_at_once(sock: socket.socket, data: bytes | bytearray) -> int:
    """How much of `data` the non-blocking socket takes now (0 when its buffer is full),
    without a wait; a peer that is gone raises BrokenResourceError."""
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise _broken(sock, exc) from exc


async def send_rest(
    sock: socket.socket, data: bytes | bytearray | memoryview, timeout_s: float | None = None
) -> None:
    """Write `data` as the socket drains, at most `timeout_s` (see `send_all`): what
    `send_at_once` left."""
    view = memoryview(data)
    try:
        with anyio.fail_after(timeout_s):
            while view:
                await anyio.wait_writable(sock)
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _broken(sock, exc) from exc
    except BaseException as exc:
        # Cut off (timeout, cancellation) possibly in the middle of a frame: nothing may follow
        # the partial frame, so end the byte stream here; the peer sees a truncated frame.
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if isinstance(exc, TimeoutError):
            raise anyio.BrokenResourceError(f"peer read nothing for {timeout_s}s") from None
        raise


def _broken(sock: socket.socket, exc: OSError) -> Exception:
    if sock.fileno() < 0:
        return anyio.ClosedResourceError()
    return anyio.BrokenResourceError(str(exc))
