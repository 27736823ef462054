"""The raw Varlink wire protocol, as any client speaks it: NUL-terminated JSON over a Unix socket.

Deliberately independent of `timelined.client`: the benchmark measures the daemon through the
stable contract (`{"method": "io.timelined.Timeline.AppendBlock", "parameters": {…}}\\0`), with
the least client-side work, so that the figures are the daemon's and not the client library's.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import msgspec

TIMELINE = "io.timelined.Timeline"
ADMIN = "io.timelined.Admin"


class VarlinkError(Exception):
    def __init__(self, error: str, parameters: Any) -> None:
        super().__init__(f"{error}: {parameters}")
        self.error = error
        self.parameters = parameters


class _Reply(msgspec.Struct):
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    error: str | None = None
    continues: bool = False


_reply = msgspec.json.Decoder(_Reply)


def encode_call(method: str, parameters: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"method": method}
    if parameters is not None:
        body["parameters"] = parameters
    return msgspec.json.encode(body) + b"\0"


def decode_reply(frame: bytes) -> dict[str, Any]:
    reply = _reply.decode(frame)
    if reply.error is not None:
        raise VarlinkError(reply.error, reply.parameters)
    return reply.parameters


class WireClient:
    """A blocking client on one connection; calls are answered in order."""

    def __init__(self, path: Path | str, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = bytearray()

    def call(self, method: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        self.sock.sendall(encode_call(method, parameters))
        return decode_reply(self.recv_frame())

    def timed(self, method: str, parameters: dict[str, Any] | None = None) -> float:
        """Seconds from sending the call to having its whole reply (decoded)."""
        data = encode_call(method, parameters)
        t = time.perf_counter()
        self.sock.sendall(data)
        decode_reply(self.recv_frame())
        return time.perf_counter() - t

    def recv_frame(self) -> bytes:
        while True:
            end = self.buf.find(0)
            if end >= 0:
                frame = bytes(self.buf[:end])
                del self.buf[: end + 1]
                return frame
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answers(path: Path | str) -> bool:
    """True once the daemon answers Admin.GetStatus on `path`."""
    try:
        with WireClient(path, timeout=5.0) as c:
            c.call(f"{ADMIN}.GetStatus")
        return True
    except (OSError, ConnectionError):
        return False
