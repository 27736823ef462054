"""A peer that takes connections and holds them: stdlib only, run by the system python as
another uid (tests/daemon/test_fairness.py copies it into a world-readable directory).

    hostile_peer.py SOCKET COUNT MODE SECONDS

- `call`: open COUNT connections one after the other, each calling GetStatus; print one JSON
  line, a list with each connection's outcome ("ok", or the error's short name with its
  parameters), keep the connections that were answered, and close them all once a line (or EOF)
  arrives on stdin.
- `silent`: open COUNT connections and send nothing; print "opened", then watch them for up to
  SECONDS and print one JSON line: for each, after how many seconds the daemon closed it (null:
  not within SECONDS) and the error it sent first (null: none).
- `churn`: for SECONDS, connect, send nothing, read until the daemon closes, again; print the
  number of connections made and the errors seen, by name.
- `partial`: open COUNT connections, each calling GetStatus, then sending PARTIAL bytes of a
  frame without its end; print one JSON line, each connection's outcome ("held", or the error
  the daemon sent instead), and hold them until a line (or EOF) arrives on stdin.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from typing import Any

STATUS = b'{"method":"io.timelined.Admin.GetStatus","parameters":{}}\0'


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    return s


def first_frame(s: socket.socket) -> dict[str, Any] | None:
    """The first frame the daemon sent, or None when it closed without one."""
    data = b""
    while b"\0" not in data:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            return {"error": "timeout"}  # connected, and the daemon said nothing for 10 s
        if not chunk:
            return None
        data += chunk
    reply: dict[str, Any] = json.loads(data.split(b"\0", 1)[0])
    return reply


def outcome(reply: dict[str, Any] | None) -> Any:
    if reply is None:
        return "closed"
    if "error" not in reply:
        return "ok"
    return [reply["error"].rsplit(".", 1)[-1], reply.get("parameters", {})]


def call(path: str, count: int) -> None:
    held = []
    results = []
    for _ in range(count):
        s = connect(path)
        try:
            s.sendall(STATUS)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused as it connected: the daemon's error waits to be read
        result = outcome(first_frame(s))
        results.append(result)
        if result == "ok":
            held.append(s)
        else:
            s.close()
    print(json.dumps(results), flush=True)
    sys.stdin.readline()
    for s in held:
        s.close()


def silent(path: str, count: int, seconds: float) -> None:
    socks = [connect(path) for _ in range(count)]
    started = time.monotonic()
    print("opened", flush=True)
    closed_after: list[float | None] = [None] * count
    first: list[Any] = [None] * count
    data = [b""] * count
    left = set(range(count))
    while left and time.monotonic() - started < seconds:
        ready, _, _ = select.select([socks[i] for i in left], [], [], 0.05)
        for s in ready:
            i = socks.index(s)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                data[i] += chunk
                continue
            closed_after[i] = round(time.monotonic() - started, 3)
            if data[i]:
                first[i] = outcome(json.loads(data[i].split(b"\0", 1)[0]))
            left.discard(i)
    print(json.dumps({"closed_after": closed_after, "first": first}), flush=True)
    for s in socks:
        s.close()


def churn(path: str, seconds: float) -> None:
    made = 0
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s = connect(path)
        made += 1
        result = outcome(first_frame(s))
        name = result if isinstance(result, str) else result[0]
        errors[name] = errors.get(name, 0) + 1
        s.close()
    print(json.dumps({"made": made, "outcomes": errors}), flush=True)


PARTIAL = 1024 * 1024 - 100  # just under a frame at max_message_bytes 1 MiB


def partial(path: str, count: int) -> None:
    socks = []
    for _ in range(count):
        s = connect(path)
        s.sendall(STATUS)
        first_frame(s)  # a whole call first: the long idle timeout applies
        try:
            s.sendall(b'{"method":"io.timelined.Admin.GetStatus","parameters":{"x":"')
            s.sendall(b"a" * (PARTIAL - 60))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused: its error waits to be read
        socks.append(s)
    time.sleep(0.5)  # the daemon has read what each sent
    results: list[Any] = []
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            results.append("held")
            continue
        except ConnectionResetError:
            data = b""
        results.append(outcome(json.loads(data.split(b"\0", 1)[0]) if data else None))
    print(json.dumps(results), flush=True)
    sys.stdin.readline()
    for s in socks:
        s.close()


def main() -> None:
    path, count, mode, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    if mode == "call":
        call(path, count)
    elif mode == "silent":
        silent(path, count, seconds)
    elif mode == "partial":
        partial(path, count)
    else:
        churn(path, seconds)


if __name__ == "__main__":
    main()
