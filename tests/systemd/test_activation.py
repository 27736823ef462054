"""Socket activation: a child run by the real systemd-socket-activate serves on the passed fd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from timelined.daemon.activation import (
    ActivationError,
    ListenSocket,
    listen_fds,
    pick_listener,
    take_listener,
)

from .support import PYTHON, child_env, require_tool

# The child: take the passed socket with our module, report what it saw, echo, serve N clients.
CHILD = r"""
import fcntl, json, os, sys
from timelined.daemon.activation import listen_fds, pick_listener

seen = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
socks = listen_fds()
chosen = pick_listener(socks)
report = {
    "seen": seen,
    "left": [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ],
    "names": [s.name for s in socks],
    "fds": [s.sock.fileno() for s in socks],
    "cloexec": [
        bool(fcntl.fcntl(s.sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for s in socks
    ],
    "chosen": [chosen.name, chosen.sock.fileno(), chosen.sock.getsockname()],
}
for _ in range(int(sys.argv[1])):
    conn, _ = chosen.sock.accept()
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        conn.sendall(json.dumps({"echo": data.decode().strip(), **report}).encode() + b"\n")
"""


def _talk(path: Path, message: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with s:
        s.sendall(message.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data)  # type: ignore[no-any-return]


@contextmanager
def _activated(tmp_path: Path, args: list[str], serve: int) -> Iterator[subprocess.Popen[str]]:
    tool = require_tool("systemd-socket-activate")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = child_env()
    cmd = [tool, *args, "-E", f"PYTHONPATH={env['PYTHONPATH']}", PYTHON, str(script), str(serve)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_serves_on_the_socket_passed_by_systemd_socket_activate(tmp_path: Path) -> None:
    path = tmp_path / "timelined.sock"
    with _activated(tmp_path, ["-l", str(path), "--fdname=varlink"], serve=2) as proc:
        first = _talk(path, "hello")
        second = _talk(path, "again")  # the same passed socket keeps accepting
    assert proc.returncode == 0
    assert first["echo"] == "hello" and second["echo"] == "again"
    seen = first["seen"]
    assert isinstance(seen, dict)
    assert seen["LISTEN_FDS"] == "1" and seen["LISTEN_FDNAMES"] == "varlink"
    assert first["left"] == []  # unset, so children do not inherit them
    assert first["names"] == ["varlink"]
    assert first["fds"] == [3]
    assert first["cloexec"] == [True]
    assert first["chosen"] == ["varlink", 3, str(path)]


def test_picks_the_named_socket_among_several(tmp_path: Path) -> None:
    other, ours = tmp_path / "metrics.sock", tmp_path / "timelined.sock"
    args = ["-l", str(other), "-l", str(ours), "--fdname=metrics:varlink"]
    with _activated(tmp_path, args, serve=1) as proc:
        reply = _talk(ours, "named")
    assert proc.returncode == 0
    assert reply["names"] == ["metrics", "varlink"]
    assert reply["fds"] == [3, 4]
    assert reply["cloexec"] == [True, True]
    assert reply["chosen"] == ["varlink", 4, str(ours)]


# --- in-process: environment handling and the choice of socket ------------------------------


def test_no_activation_without_the_variables() -> None:
    env: dict[str, str] = {}
    assert listen_fds(env) == []
    assert take_listener(env) is None


def test_variables_for_another_process_are_ignored_and_unset() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "varlink"}
    assert listen_fds(env) == []
    assert env == {}


def test_variables_kept_when_asked() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(env, unset_environment=False) == []
    assert env["LISTEN_FDS"] == "1"


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "me", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "one"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "varlink"},
    ],
)
def test_malformed_variables_are_an_error(env: dict[str, str]) -> None:
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    with pytest.raises(ActivationError):
        listen_fds(env)
    assert env == {}  # unset even on error


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[dict[str, socket.socket]]:
    made: dict[str, socket.socket] = {}
    for name, kind in (
        ("a", socket.SOCK_STREAM),
        ("b", socket.SOCK_STREAM),
        ("d", socket.SOCK_DGRAM),
    ):
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(str(tmp_path / f"{name}.sock"))
        if kind == socket.SOCK_STREAM:
            s.listen()
        made[name] = s
    made["unlistened"] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    yield made
    for s in made.values():
        s.close()


def test_pick_by_name_then_first_stream_listener(sockets: dict[str, socket.socket]) -> None:
    a, b, d, u = sockets["a"], sockets["b"], sockets["d"], sockets["unlistened"]
    assert pick_listener([]) is None
    by_name = [ListenSocket("metrics", a), ListenSocket("varlink", b)]
    assert pick_listener(by_name) == by_name[1]
    preferred = [ListenSocket("varlink", a), ListenSocket("timelined", b)]
    assert pick_listener(preferred) == preferred[1]  # "timelined" is looked for first
    unnamed = [ListenSocket("unknown", d), ListenSocket("unknown", u), ListenSocket("unknown", a)]
    assert pick_listener(unnamed) == unnamed[2]


def test_pick_refuses_unusable_sockets(sockets: dict[str, socket.socket]) -> None:
    with pytest.raises(ActivationError, match="named 'varlink'"):
        pick_listener([ListenSocket("varlink", sockets["d"])])
    with pytest.raises(ActivationError, match="no passed socket"):
        pick_listener([ListenSocket("unknown", sockets["d"])])
