"""Hostile clients against a real daemon's memory (issue 18), and its RSS from /proc.

Shared by tests/daemon/test_memory_abuse.py (each finding, and a short abuse round) and
tests/stress/test_memory_stress.py (`make stress ROUNDS=N`). Scaled down so each bound shows
in seconds: `max_message_bytes` 1 MiB, blocks of ~500 KB, a log of ~30 MB.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timelined.client import Client

MiB = 1024 * 1024
MAX_MESSAGE = MiB
BLOCK = 500_000
LIMITS = {"max_message_bytes": MAX_MESSAGE, "max_block_bytes": 600_000}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def settled_rss(pid: int, seconds: float = 1.0) -> float:
    """RSS after the daemon had a moment to finish what it was doing (the lowest of a few)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_mib(pid))
        time.sleep(0.1)
    return min(samples)


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def send_call(sock: socket.socket, method: str, params: dict[str, Any], more: bool = False) -> None:
    call: dict[str, Any] = {"method": method, "parameters": params}
    if more:
        call["more"] = True
    sock.sendall(json.dumps(call).encode() + b"\0")


def read_frames(sock: socket.socket, until_last: bool = True) -> list[bytes]:
    """Frames until one without `continues` (the reply or the stream's end)."""
    frames: list[bytes] = []
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return frames
        buf += chunk
        while b"\0" in buf:
            end = buf.index(b"\0")
            frame = bytes(buf[:end])
            del buf[: end + 1]
            frames.append(frame)
            if not until_last or b'"continues":true' not in frame[-40:]:
                return frames


def read_replies(sock: socket.socket, count: int) -> Iterator[dict[str, Any]]:
    """The next `count` replies of a pipelining peer, decoded, as they arrive."""
    buf = bytearray()
    read = 0
    while read < count:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {read} replies"
        buf += chunk
        while b"\0" in buf and read < count:
            end = buf.index(b"\0")
            reply: dict[str, Any] = json.loads(bytes(buf[:end]))
            del buf[: end + 1]
            read += 1
            yield reply


def call(path: Path, method: str, params: dict[str, Any]) -> bytes:
    with connect(path) as sock:
        send_call(sock, method, params)
        return read_frames(sock)[0]


def fill_log(path: Path, blocks: int, prefix: str = "") -> str:
    """A conversation with `blocks` blocks of BLOCK bytes; its root context id."""
    with Client(path, timeout=30) as c:
        conv = c.create_conversation("memory")
        for i in range(blocks):
            c.append_block(conv.root_context_id, "user", f"{prefix}{i} " + "w" * BLOCK)
        return conv.root_context_id


def watch_until_live(path: Path) -> tuple[int, int]:
    """Watch(after_seq 0) read to its live marker: (largest frame, events)."""
    with connect(path) as sock:
        send_call(sock, "io.timelined.Timeline.Watch", {"after_seq": 0}, more=True)
        largest = events = 0
        buf = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            assert chunk, "the watch ended"
            buf += chunk
            while b"\0" in buf:
                end = buf.index(b"\0")
                frame = bytes(buf[:end])
                del buf[: end + 1]
                largest = max(largest, len(frame))
                reply = json.loads(frame)
                assert "error" not in reply, reply
                events += len(reply["parameters"]["events"])
                if reply["parameters"]["live"]:
                    return largest, events


@dataclass
class AbuseResult:
    idle_mib: float
    peak_mib: float = 0.0
    connections: int = 0
    appends: int = 0
    append_failures: list[str] = field(default_factory=list)

    @property
    def bound_mib(self) -> float:
        """Issue 18's bound: twice the idle RSS + max_message_bytes per connection in use."""
        return 2 * self.idle_mib + self.connections * MAX_MESSAGE / MiB

    def line(self) -> str:
        return (
            f"memory: idle_mib={self.idle_mib:.0f} peak_mib={self.peak_mib:.0f} "
            f"bound_mib={self.bound_mib:.0f} connections={self.connections} "
            f"appends={self.appends} append_failures={len(self.append_failures)}"
        )


def abuse_rounds(path: Path, pid: int, context_id: str, rounds: int) -> AbuseResult:
    """Several hostile clients at once per round (non-reading watchers, huge searches,
    oversized frames, refused big calls, slow readers) while a writer keeps appending."""
    result = AbuseResult(idle_mib=settled_rss(pid))
    stop = threading.Event()

    def writer() -> None:
        with Client(path, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.append_block(context_id, "user", "still writing " + "v" * 20_000)
                    result.appends += 1
                except Exception as exc:  # any failure is the finding
                    result.append_failures.append(repr(exc))
                    time.sleep(0.05)

    def sample() -> None:
        while not stop.is_set():
            result.peak_mib = max(result.peak_mib, rss_mib(pid))
            time.sleep(0.05)

    threads = [threading.Thread(target=writer), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    try:
        for _ in range(rounds):
            held: list[socket.socket] = []
            try:
                for _ in range(4):  # watchers that never read
                    s = connect(path)
                    send_call(s, "io.timelined.Timeline.Watch", {"after_seq": 0}, more=True)
                    held.append(s)
                for _ in range(3):  # big searches, read slowly (not at all for now)
                    s = connect(path)
                    send_call(
                        s,
                        "io.timelined.Timeline.SearchBlocks",
                        {"query": "hugetoken*", "limit": 1000},
                    )
                    held.append(s)
                for _ in range(3):  # ListBlocks and ReadLog pages left unread
                    s = connect(path)
                    send_call(
                        s,
                        "io.timelined.Timeline.ListBlocks",
                        {"context_id": context_id, "limit": 1000},
                    )
                    held.append(s)
                for _ in range(3):  # oversized frames (no NUL) and refused big calls
                    s = connect(path)
                    try:
                        s.sendall(b"x" * (2 * MAX_MESSAGE))
                    except OSError:
                        pass
                    s.close()
                    call(path, "io.timelined.Admin.GetStatus", {"junk": "j" * (MAX_MESSAGE - 200)})
                result.connections = max(result.connections, len(held) + 2)
                time.sleep(0.5)
                for s in held[4:]:  # the slow readers read a little, then go
                    s.recv(4096)
            finally:
                for s in held:
                    s.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return result
