"""Raw Varlink over a Unix socket for the fuzzer: send bytes as they come, read every reply.

`exchange()` sends a payload in chunks (split wherever the caller wants, with optional pauses),
reads concurrently (a pipelined burst with large replies would otherwise deadlock both sides),
half-closes, and reads until the daemon closes. It never raises for what the daemon does: it
reports the replies, whether the daemon closed the connection, and whether it timed out.

`ReplyCheck` is the oracle: given the frames the daemon saw, which replies must come back, in
which order, and what each may look like (the method's reply Struct, or a named error declared
with its parameters). `Canary` is a well-behaved client in a thread that must keep getting
correct answers while the fuzzer runs; `rss_kib` reads a process's resident memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from timelined import api
from timelined.varlink.client import Connection
from timelined.varlink.errors import VarlinkError
from timelined.varlink.service import SERVICE

# --- the daemon's vocabulary, read from the real interfaces -------------------------------------

STANDARD_ERRORS: dict[str, tuple[str, ...]] = {
    "org.varlink.service.InterfaceNotFound": ("interface",),
    "org.varlink.service.MethodNotFound": ("method",),
    "org.varlink.service.MethodNotImplemented": ("method",),
    "org.varlink.service.InvalidParameter": ("parameter",),
    "org.varlink.service.ExpectedMore": (),  # ExportConversation called without `more`
}
# Named errors the server sends on its own, whatever the method: outside a call, so named by
# their home interface.
PROTOCOL_ERROR = "io.timelined.Timeline.ProtocolError"
LIMIT_EXCEEDED = "io.timelined.Timeline.LimitExceeded"
CONNECTION_ERRORS = (PROTOCOL_ERROR, LIMIT_EXCEEDED, "io.timelined.Timeline.ShuttingDown")
INTERNAL_ERRORS = frozenset(f"{i.name}.InternalError" for i in api.INTERFACES)
_UNKNOWN_METHOD_ERRORS = (
    "org.varlink.service.InterfaceNotFound",
    "org.varlink.service.MethodNotFound",
)

INTERFACES = {i.name: i for i in (SERVICE, *api.INTERFACES)}
METHODS: dict[str, Any] = {f"{i.name}.{m.name}": m for i in INTERFACES.values() for m in i.methods}
# Every error by its interface-qualified name: an error on a call must be declared by the
# called method's interface under that interface's name.
ERROR_DEFS: dict[str, Any] = {f"{i.name}.{e.name}": e for i in api.INTERFACES for e in i.errors}
DECLARED: dict[str, frozenset[str]] = {
    i.name: frozenset(f"{i.name}.{e.name}" for e in i.errors) for i in INTERFACES.values()
}


class _Reply(msgspec.Struct, forbid_unknown_fields=True):
    parameters: msgspec.Raw = msgspec.Raw(b"{}")
    continues: bool = False
    error: str | None = None


_REPLY = msgspec.json.Decoder(_Reply)
_reply_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


# --- one exchange -------------------------------------------------------------------------------


@dataclass
class Exchange:
    data: bytes = b""
    closed: bool = False  # the daemon closed (EOF or reset)
    timed_out: bool = False
    send_failed: bool = False  # the daemon stopped reading before we finished (after an error)
    seconds: float = 0.0

    @property
    def frames(self) -> list[bytes]:
        """Complete reply frames; bytes after the last NUL are reported by `tail`."""
        return self.data.split(b"\0")[:-1]

    @property
    def tail(self) -> bytes:
        return self.data.rsplit(b"\0", 1)[-1]


def connect(path: Path | str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def reset_close(s: socket.socket) -> None:
    """Close abruptly: SO_LINGER 0, whatever is unsent or unread is dropped."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def exchange(
    path: Path | str,
    chunks: Sequence[bytes],
    *,
    pause_s: float = 0.0,
    half_close: bool = True,
    read_limit: int | None = None,
    timeout: float = 20.0,
) -> Exchange:
    """Send `chunks` (one write each, `pause_s` apart), half-close, read until closed.

    `read_limit`: stop (and reset the connection) after reading that many bytes, to hang up
    in the middle of a reply. Without `half_close` the connection is reset right after the
    last chunk, without reading: a client that vanishes mid-frame.
    """
    started = time.monotonic()
    deadline = started + timeout
    out = Exchange()
    s = connect(path, timeout)
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    pending = [memoryview(c) for c in chunks if c]
    pending.reverse()
    current: memoryview | None = pending.pop() if pending else None
    next_send = 0.0
    buf = bytearray()
    sending = True
    try:
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            now = time.monotonic()
            if now > deadline:
                out.timed_out = True
                break
            if sending and current is None:
                sending = False
                if not half_close:
                    break
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR)
            want = selectors.EVENT_READ
            if sending and now >= next_send:
                want |= selectors.EVENT_WRITE
            sel.modify(s, want)
            wait = deadline - now
            if sending and now < next_send:
                wait = min(wait, next_send - now)
            events = sel.select(max(0.0, min(wait, 0.5)))
            for _, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(256 * 1024)
                    except BlockingIOError:
                        chunk = None
                    except OSError:
                        chunk = b""  # reset by the daemon: what was read stays read
                    if chunk is not None:
                        if not chunk:
                            out.closed = True
                            break
                        buf += chunk
                        if read_limit is not None and len(buf) >= read_limit:
                            break
                if mask & selectors.EVENT_WRITE and current is not None:
                    try:
                        n = s.send(current)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        out.send_failed = True
                        current = None
                        pending.clear()
                        continue
                    current = current[n:]
                    if not current:
                        current = pending.pop() if pending else None
                        if pause_s:
                            next_send = time.monotonic() + pause_s
            if out.closed or (read_limit is not None and len(buf) >= read_limit):
                break
    finally:
        sel.close()
        if out.closed:
            s.close()
        else:
            reset_close(s)
    out.data = bytes(buf)
    out.seconds = time.monotonic() - started
    return out


def split_at(payload: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`payload` cut at the given offsets (any order, duplicates and out-of-range ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(payload)})
    out: list[bytes] = []
    last = 0
    for p in points:
        out.append(payload[last:p])
        last = p
    out.append(payload[last:])
    return out


# --- the oracle ---------------------------------------------------------------------------------

CALL = "call"
ONEWAY = "oneway"
BAD = "bad"
TOO_LARGE = "too_large"
STREAM = "stream"  # a call with `more`: replies with `continues`, then a last one (or EOF)
MAYBE = "maybe"  # either a ProtocolError that ends the connection, or a reply to the call
MAYBE_SILENT = "maybe_silent"  # the same for a oneway call: a ProtocolError, or nothing

# Below this nesting depth every JSON parser here decodes a frame; above it, whether the daemon
# answers a ProtocolError (envelope), an InvalidParameter (parameters) or decodes it all
# depends on its stack depth at the time.
DEEP_NESTING = 200
_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]*)"')
_ONEWAY = re.compile(rb'"oneway"\s*:\s*true')


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def nesting(frame: bytes) -> int:
    """The deepest nesting of arrays and objects in `frame` (strings skipped)."""
    if frame.count(b"[") + frame.count(b"{") < DEEP_NESTING:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for byte in frame:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def classify(frame: bytes, max_message_bytes: int) -> tuple[str, str | None]:
    """What the daemon must make of one complete frame (NUL excluded), judged with the
    standard library's strict JSON parser: (kind, method).

    Two cases are left open (MAYBE, MAYBE_SILENT for a oneway call): nesting deeper than
    DEEP_NESTING (the recursion limit may or may not be met), and invalid UTF-8 in a part of
    the frame the daemon skips over without decoding (an unknown key, an ignored value), which
    it may accept. Either the daemon answers a ProtocolError and closes, or it handles the call.
    """
    if len(frame) > max_message_bytes:
        return TOO_LARGE, None
    if nesting(frame) >= DEEP_NESTING:
        found = _METHOD.search(frame)
        method = found.group(1).decode("utf-8", "replace") if found else None
        return (MAYBE_SILENT if _ONEWAY.search(frame) else MAYBE), method
    try:
        text = frame.decode("utf-8")
        maybe = False
    except UnicodeDecodeError:
        text = frame.decode("utf-8", "replace")
        maybe = True
    try:
        msg = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return BAD, None
    if not isinstance(msg, dict) or not isinstance(msg.get("method"), str) or _surrogates(msg):
        return BAD, None
    for flag in ("more", "oneway", "upgrade"):
        if msg.get(flag) is not None and not isinstance(msg[flag], bool):
            return BAD, None
    if maybe:
        if "\ufffd" in msg["method"]:
            return BAD, None
        return (MAYBE_SILENT if msg.get("oneway") else MAYBE), msg["method"]
    if msg.get("oneway"):
        return ONEWAY, msg["method"]
    return (STREAM if msg.get("more") else CALL), msg["method"]


def _surrogates(value: Any) -> bool:
    """A lone surrogate escape (`"\\ud800"`): valid JSON grammar, but no Unicode text, and
    the daemon refuses the frame as malformed."""
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_surrogates(k) or _surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_surrogates(v) for v in value)
    return False


@dataclass
class Expected:
    """One slot per reply, in order: (CALL, method), (error name, None) for an error that
    ends the connection, (MAYBE, method): either a ProtocolError that ends it or a reply to
    the method, (MAYBE_SILENT, method): either a ProtocolError that ends it or no reply."""

    slots: list[tuple[str, str | None]]
    frames: int


def expect(payload: bytes, max_message_bytes: int) -> Expected:
    """The replies `payload` (then a half-close) must get, in order."""
    parts = payload.split(b"\0")
    partial = parts.pop()
    frames = len(parts) + bool(partial)
    slots: list[tuple[str, str | None]] = []
    for frame in parts:
        kind, method = classify(frame, max_message_bytes)
        if kind == TOO_LARGE:
            slots.append((LIMIT_EXCEEDED, None))
            return Expected(slots, frames)
        if kind == BAD:
            slots.append((PROTOCOL_ERROR, None))
            return Expected(slots, frames)
        if kind in (CALL, STREAM, MAYBE, MAYBE_SILENT):
            slots.append((kind, method))
    if len(partial) > max_message_bytes:
        slots.append((LIMIT_EXCEEDED, None))
    return Expected(slots, frames)


class Violation(AssertionError):
    """A reply the daemon must not send (or a missing one); `kind` names the failure class."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def check_reply(
    frame: bytes, method: str | None, *, stream: bool = False
) -> tuple[str | None, Any]:
    """Validate one reply frame; returns (error name or None, parameters as builtins).

    A reply is an object with `parameters` (an object) and/or `error` (a name) and nothing
    else. An error must be named, declared (by the method's interface, or a standard or
    connection-level one) and carry the parameters its declaration lists. A success must
    decode into the method's reply Struct. InternalError is a bug, never a valid answer.
    """
    try:
        reply = _REPLY.decode(frame)
        params = json.loads(bytes(reply.parameters))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise Violation("malformed reply", f"{exc}: {frame[:300]!r}") from None
    if not isinstance(params, dict):
        raise Violation("malformed reply", f"parameters not an object: {frame[:300]!r}")
    if reply.error is None:
        if reply.continues and not stream:
            raise Violation("malformed reply", f"continues without more: {frame[:300]!r}")
        m = METHODS.get(method or "")
        if m is None:
            raise Violation("unexpected success", f"{method!r} answered {frame[:300]!r}")
        dec = _reply_decoders.get(m.reply)
        if dec is None:
            dec = _reply_decoders[m.reply] = msgspec.json.Decoder(m.reply)
        try:
            dec.decode(reply.parameters)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Violation("bad reply", f"{method}: {exc}: {frame[:300]!r}") from None
        return None, params
    name = reply.error
    if name in INTERNAL_ERRORS:
        raise Violation("unnamed error", f"{method}: {frame[:500]!r}")
    if name in STANDARD_ERRORS:
        if method not in METHODS and name not in _UNKNOWN_METHOD_ERRORS:
            raise Violation("wrong error", f"{name} for the unknown method {method!r}")
        missing = [p for p in STANDARD_ERRORS[name] if not isinstance(params.get(p), str)]
        if missing:
            raise Violation("bad error", f"{name} without {missing}: {frame[:300]!r}")
        return name, params
    if method not in METHODS and name not in CONNECTION_ERRORS:
        raise Violation("wrong error", f"{name} for the unknown method {method!r}")
    definition = ERROR_DEFS.get(name)
    if definition is None:
        raise Violation("undeclared error", f"{method}: {frame[:300]!r}")
    interface = (method or "").rpartition(".")[0]
    if name not in CONNECTION_ERRORS and interface in DECLARED and name not in DECLARED[interface]:
        raise Violation("undeclared error", f"{interface} does not declare {name}: {frame[:300]!r}")
    try:
        definition.check(params)
    except msgspec.ValidationError as exc:
        raise Violation("bad error", f"{name}: {exc}: {frame[:300]!r}") from None
    return name, params


def check_exchange(payload: bytes, result: Exchange, max_message_bytes: int) -> list[Any]:
    """Every reply to `payload` as `expect` says, then the daemon closes; raises Violation.
    Returns the successful replies' parameters (the fuzzer harvests ids from them)."""
    if result.timed_out:
        raise Violation("hang", f"no end of the replies within {result.seconds:.1f}s")
    if result.tail:
        raise Violation("malformed reply", f"bytes after the last NUL: {result.tail[:200]!r}")
    want = expect(payload, max_message_bytes)
    got = result.frames
    found: list[Any] = []
    i = 0
    for slot, method in want.slots:
        if slot == STREAM and i == len(got):
            break  # a stream with nothing to send yet (a Watch we stopped reading)
        if slot == MAYBE_SILENT:
            if i < len(got) and _is_protocol_error(got[i]):
                check_reply(got[i], None)
                i += 1
                break
            continue
        if i == len(got):
            raise Violation("reply count", f"{len(got)} replies for the slots {want.slots}")
        frame = got[i]
        i += 1
        if slot == STREAM:
            while _continues(frame):
                name, params = check_reply(frame, method, stream=True)
                found.append(params)
                if i == len(got):
                    break
                frame = got[i]
                i += 1
            else:
                name, params = check_reply(frame, method)
                if name is None:
                    found.append(params)
                continue
            break  # a stream we stopped reading (a Watch): nothing may follow
        if slot in (CALL, MAYBE):
            name, params = check_reply(frame, method)
            if name is None:
                found.append(params)
            elif slot == MAYBE and name == PROTOCOL_ERROR:
                break  # the frame was refused as malformed: the connection ends
        else:
            name, _ = check_reply(frame, None)
            if name != slot:
                raise Violation("wrong error", f"{name} instead of {slot}")
    if i != len(got):
        extra = [f[:120] for f in got[i:]]
        raise Violation("reply count", f"replies beyond the slots {want.slots}: {extra}")
    if not result.closed:
        raise Violation("not closed", "the daemon kept the connection open after EOF")
    return found


def _continues(frame: bytes) -> bool:
    try:
        return bool(json.loads(frame).get("continues") is True)
    except (ValueError, AttributeError):
        return False


def _is_protocol_error(frame: bytes) -> bool:
    try:
        return bool(json.loads(frame).get("error") == PROTOCOL_ERROR)
    except (ValueError, AttributeError):
        return False


# --- process facts ------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_sockets(pid: int) -> int:
    """How many sockets a process holds (a leaked connection shows here)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


# --- the canary ---------------------------------------------------------------------------------


@dataclass
class CanaryReport:
    calls: int
    failures: list[str]
    max_latency_s: float


@dataclass
class Canary:
    """A polite client in a thread: GetStatus and AppendBlock in turn, each answer checked.

    Its context belongs to a conversation the fuzzer never learns the ids of, so nothing the
    fuzzer does can legitimately refuse its appends. A failure is an error, a wrong answer,
    or an answer slower than `max_latency_s`.
    """

    socket_path: Path
    context_id: str
    interval_s: float = 0.02
    max_latency_s: float = 5.0
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    worst_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Canary:
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> CanaryReport:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self.report()

    def report(self) -> CanaryReport:
        return CanaryReport(self.calls, list(self.failures), self.worst_s)

    def _fail(self, what: str) -> None:
        if len(self.failures) < 100:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {what}")

    def _timed(self, conn: Connection, method: str, params: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        reply = conn.call(method, params)
        took = time.monotonic() - t0
        self.worst_s = max(self.worst_s, took)
        self.calls += 1
        if took > self.max_latency_s:
            self._fail(f"{method} took {took:.2f}s")
        return reply

    def _run(self) -> None:
        tag = uuid.uuid4().hex[:12]
        conn: Connection | None = None
        last_seq = 0
        i = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = Connection.open(self.socket_path, timeout=self.max_latency_s * 2)
                status = self._timed(conn, "io.timelined.Admin.GetStatus", {})["status"]
                if not isinstance(status.get("last_seq"), int) or status["last_seq"] < last_seq:
                    self._fail(f"GetStatus last_seq {status.get('last_seq')} < {last_seq}")
                block_id = f"canary-{tag}-{i}"
                content = f"canary {i} ✓ {tag}"
                got = self._timed(
                    conn,
                    "io.timelined.Timeline.AppendBlock",
                    {
                        "context_id": self.context_id,
                        "role": "user",
                        "content": content,
                        "id": block_id,
                    },
                )
                block = got["block"]
                if (block["id"], block["content"], block["context_id"]) != (
                    block_id,
                    content,
                    self.context_id,
                ) or got["seq"] <= last_seq:
                    self._fail(f"AppendBlock answered {got!r}")
                last_seq = max(last_seq, got["seq"])
                if i % 10 == 9:
                    back = self._timed(conn, "io.timelined.Timeline.GetBlock", {"id": block_id})
                    if back["block"]["content"] != content:
                        self._fail(f"GetBlock answered {back!r}")
                i += 1
            except (VarlinkError, OSError, KeyError, TypeError) as exc:
                i += 1  # a fresh block id: a retry of this one would be a (valid) old answer
                self._fail(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                    conn = None
                self._stop.wait(0.2)
                continue
            self._stop.wait(self.interval_s)
        if conn is not None:
            conn.close()
