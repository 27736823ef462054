"""sd_notify over a real AF_UNIX datagram socket (path and abstract), and the watchdog task."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from timelined.daemon.notify import Notifier, StatusText, run_watchdog, watchdog_interval


class Receiver:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out


@pytest.fixture
def path_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, str]]:
    path = str(tmp_path / "notify.sock")
    r = Receiver(path)
    yield r, path
    r.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[Receiver, str]]:
    name = f"timelined-test-{uuid.uuid4().hex}"
    r = Receiver(b"\0" + name.encode())
    yield r, "@" + name
    r.sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(
    request: pytest.FixtureRequest,
    path_receiver: tuple[Receiver, str],
    abstract_receiver: tuple[Receiver, str],
) -> tuple[Receiver, str]:
    return path_receiver if request.param == "path" else abstract_receiver


def test_messages(receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch) -> None:
    r, address = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    n = Notifier.from_environ()
    assert n.enabled and n.target == address
    assert n.ready()
    assert r.recv() == "READY=1"
    assert n.ready("serving")
    assert r.recv() == "READY=1\nSTATUS=serving"
    assert n.status(StatusText.recovering(5, 10))
    assert r.recv() == "STATUS=recovering: rolling forward 5/10 events"
    assert n.stopping()
    assert r.recv() == "STOPPING=1"
    assert n.watchdog()
    assert r.recv() == "WATCHDOG=1"
    assert n.extend_timeout(30_000_000)
    assert r.recv() == "EXTEND_TIMEOUT_USEC=30000000"
    assert n.errno(5)
    assert r.recv() == "ERRNO=5"
    n.close()
    assert n.status("sends again after close")
    assert r.recv() == "STATUS=sends again after close"


def test_reloading_carries_monotonic_usec(path_receiver: tuple[Receiver, str]) -> None:
    r, address = path_receiver
    n = Notifier(address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = r.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_newlines_cannot_forge_assignments(path_receiver: tuple[Receiver, str]) -> None:
    r, address = path_receiver
    Notifier(address).status("drift in ctx_1\nREADY=1")
    assert r.recv() == "STATUS=drift in ctx_1 READY=1"


def test_socket_is_cloexec(path_receiver: tuple[Receiver, str]) -> None:
    r, address = path_receiver
    n = Notifier(address)
    n.ready()
    r.recv()
    assert n._sock is not None
    assert not os.get_inheritable(n._sock.fileno())


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_environ()
    assert not n.enabled
    for call in (n.ready, n.stopping, n.reloading, n.watchdog):
        assert call() is False
    assert n.status("x") is False
    assert n.extend_timeout(1) is False
    assert n.errno(1) is False
    assert n._sock is None  # nothing was even opened


def test_unsupported_address_is_a_no_op() -> None:
    assert not Notifier("vsock:2:1234").enabled
    assert not Notifier("relative/path").enabled
    assert not Notifier("@").enabled


def test_send_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="timelined.daemon.notify"):
        assert n.ready() is False
        assert n.stopping() is False
    assert "sd_notify" in caplog.text


def test_from_environ_can_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "x.sock"))
    n = Notifier.from_environ(unset=True)
    assert n.enabled
    assert "NOTIFY_SOCKET" not in os.environ


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    env = {k: (str(os.getpid()) if v == "self" else v) for k, v in env.items()}
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == pytest.approx(0.1)


def _arrivals(r: Receiver, stop: threading.Event, out: list[float]) -> None:
    r.sock.settimeout(0.05)
    while not stop.is_set():
        try:
            if r.sock.recv(64) == b"WATCHDOG=1":
                out.append(time.monotonic())
        except TimeoutError:
            continue


def test_watchdog_pings_at_half_watchdog_usec(path_receiver: tuple[Receiver, str]) -> None:
    r, address = path_receiver
    interval = watchdog_interval({"WATCHDOG_USEC": "400000"})  # systemd's WatchdogSec=0.4s
    assert interval == pytest.approx(0.2)
    arrivals: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=_arrivals, args=(r, stop, arrivals))
    t.start()

    async def main() -> None:
        with anyio.move_on_after(2.1):
            await run_watchdog(Notifier(address), interval)

    try:
        anyio.run(main)
        time.sleep(0.1)
    finally:
        stop.set()
        t.join()
    # One ping at once, then one per 0.2 s: 11 in 2.1 s; allow for a loaded machine.
    assert 8 <= len(arrivals) <= 12, arrivals
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.4, gaps  # systemd would never have seen WatchdogSec=0.4s pass


def test_a_stuck_event_loop_stops_the_pings(path_receiver: tuple[Receiver, str]) -> None:
    r, address = path_receiver
    arrivals: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=_arrivals, args=(r, stop, arrivals))
    t.start()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_watchdog, Notifier(address), 0.05)
            await anyio.sleep(0.3)
            time.sleep(0.5)  # noqa: ASYNC251 - a blocked loop: exactly what the watchdog must see
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
        time.sleep(0.1)
    finally:
        stop.set()
        t.join()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) >= 0.45, gaps
    assert len(arrivals) >= 6


def test_watchdog_task_returns_when_disabled(path_receiver: tuple[Receiver, str]) -> None:
    r, address = path_receiver

    async def main() -> None:
        with anyio.fail_after(1):
            await run_watchdog(Notifier(None), 0.01)
            await run_watchdog(Notifier(address), None)

    anyio.run(main)
    assert r.drain() == []
