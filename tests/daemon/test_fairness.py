"""Connection fairness against a real daemon, with hostile peers running as other uids.

Peers `[auth]` refuses are closed as they connect and never hold a slot; read-only peers cannot
take the slots reserved for writers; no uid holds more than its share; a peer that connects and
says nothing is closed after `idle_timeout_new_s` while one that called is kept. The hostile
peers are tests/daemon/hostile_peer.py, run by the system python as another uid (setpriv).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import (
    PEER_ENV,
    READ_ONLY_GID,
    STRANGER,
    DaemonProcess,
    as_uid,
    short_tempdir,
)
from timelined.client import Client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run peers as other uids")

MAX = 16
# The defaults at max_connections 16 (tests/config checks the rule): a quarter per uid, and
# max_connections / 16 reserved for writers; 5 s for a peer that has not called yet.
PER_UID = 4
RESERVED = 1
IDLE_NEW_S = 5
# Read-only peers: uids the daemon does not know, in the read-only group.
READERS = (65533, 65532, 65531, 65530)
STATUS = b'{"method":"io.timelined.Admin.GetStatus","parameters":{}}\0'
SCRIPT = Path(__file__).with_name("hostile_peer.py")


@pytest.fixture(scope="module")
def fair() -> Iterator[DaemonProcess]:
    with short_tempdir("tlfair") as base, DaemonProcess(base, limits={"max_connections": MAX}) as d:
        yield d


class Peer:
    """hostile_peer.py running as another uid; its stdout read line by line, with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the peer said nothing within {timeout}s"
        text = self.proc.stdout.readline()
        assert text, f"the peer ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return text.strip()

    def json(self, timeout: float = 30.0) -> Any:
        return json.loads(self.line(timeout))

    def release(self) -> None:
        """Let a `call` peer close its connections and end."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()


@contextmanager
def peer(
    daemon: DaemonProcess, uid: int, gid: int, count: int, mode: str, seconds: float = 0
) -> Iterator[Peer]:
    with short_tempdir("tlhp") as where:  # 0755: the other uid may read the script
        script = where / SCRIPT.name
        shutil.copyfile(SCRIPT, script)
        script.chmod(0o644)
        args = [str(daemon.socket_path), str(count), mode, str(seconds)]
        proc = subprocess.Popen(
            [*as_uid(uid, gid), str(script), *args],
            cwd=where,
            env=PEER_ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield Peer(proc)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: a `call` peer lets go
            try:
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def settle(daemon: DaemonProcess) -> None:
    """Wait until no other connection is open, so that a test starts with every slot free."""
    deadline = time.monotonic() + 15
    while True:
        with Client(daemon.socket_path, timeout=10) as c:
            if c.get_status().connections.open <= 1:  # this one
                break
        assert time.monotonic() < deadline, "connections of an earlier test stayed open"
        time.sleep(0.1)
    time.sleep(0.3)  # the daemon sees that last client's hang-up


def outcomes(results: list[Any]) -> tuple[int, list[Any]]:
    """(how many were answered, the refusals)."""
    return sum(r == "ok" for r in results), [r for r in results if r != "ok"]


def test_a_refused_uid_is_closed_at_once_and_never_holds_a_slot(fair: DaemonProcess) -> None:
    settle(fair)
    with Client(fair.socket_path, timeout=10) as c:
        before = c.get_status().connections.rejected
    with peer(fair, STRANGER, STRANGER, 3 * MAX, "silent", 3) as hostile:
        assert hostile.line() == "opened"
        # Three times max_connections opened and held by a uid [auth] does not know: a writer
        # connects and writes all the same.
        with Client(fair.socket_path, timeout=10) as writer:
            conv = writer.create_conversation("written next to a refused flood")
            writer.append_block(conv.root_context_id, "user", "not locked out")
        report = hostile.json()
    for first, closed_after in zip(report["first"], report["closed_after"], strict=True):
        assert first is not None and first[0] == "PermissionDenied", report
        assert first[1]["uid"] == STRANGER and first[1]["method"] == "(any method)"
        assert closed_after is not None and closed_after < 1.5, report  # not lingering
    with Client(fair.socket_path, timeout=10) as c:
        connections = c.get_status().connections
        assert connections.rejected == before + 3 * MAX  # and nothing else was refused
        admitted = connections.rejected_by_reason["admission"]
        assert admitted >= 3 * MAX
        assert "read_only" not in connections.by_class
        metrics = c.get_metrics()
    line = f'timelined_connections_refused_total{{reason="admission"}} {admitted}'
    assert line in metrics.splitlines(), metrics


def test_read_only_peers_leave_the_reserved_slots_to_writers(fair: DaemonProcess) -> None:
    settle(fair)
    results: list[Any] = []
    with ExitStack() as stack:
        for uid in READERS:  # each within its share: only the reserve stops them
            p = stack.enter_context(peer(fair, uid, READ_ONLY_GID, PER_UID, "call"))
            results += p.json()
        answered, refused = outcomes(results)
        assert answered == MAX - RESERVED, results
        assert len(refused) == len(READERS) * PER_UID - answered
        for name, params in refused:
            assert name == "LimitExceeded", refused
            assert (params["limit"], params["maximum"]) == ("max_connections", MAX - RESERVED)
        # Every slot a read-only peer may take is taken: a writer still gets in.
        with Client(fair.socket_path, timeout=10) as writer:
            conv = writer.create_conversation("written in the reserved slot")
            writer.append_block(conv.root_context_id, "user", "the reserve held")
            connections = writer.get_status().connections
        assert connections.by_class == {"read_only": MAX - RESERVED, "full": 1}
        assert connections.rejected_by_reason["reserved"] >= len(refused)


def test_one_uid_cannot_take_more_than_its_share(fair: DaemonProcess) -> None:
    settle(fair)
    with peer(fair, READERS[0], READ_ONLY_GID, PER_UID + 3, "call") as greedy:
        answered, refused = outcomes(greedy.json())
        assert answered == PER_UID
        assert len(refused) == 3
        for name, params in refused:
            assert name == "LimitExceeded", refused
            over = (params["limit"], params["size"], params["maximum"])
            assert over == ("max_connections_per_uid", PER_UID + 1, PER_UID), refused
        # Another uid of the same group is not held back by the first one's share.
        with peer(fair, READERS[1], READ_ONLY_GID, PER_UID, "call") as other:
            assert outcomes(other.json()) == (PER_UID, [])


def test_a_silent_peer_is_closed_after_the_short_idle_timeout(fair: DaemonProcess) -> None:
    settle(fair)
    active = socket.socket(socket.AF_UNIX)
    active.settimeout(10)
    active.connect(str(fair.socket_path))
    try:
        active.sendall(STATUS)
        assert b'"status"' in _frame(active)
        with peer(fair, READERS[0], READ_ONLY_GID, 2, "silent", IDLE_NEW_S + 4) as quiet:
            assert quiet.line() == "opened"
            report = quiet.json(IDLE_NEW_S + 30)
        for closed_after, first in zip(report["closed_after"], report["first"], strict=True):
            assert closed_after is not None, f"a silent peer was kept: {report}"
            # The sweep runs every second: cut after IDLE_NEW_S, not before, not much later.
            assert IDLE_NEW_S - 0.2 <= closed_after <= IDLE_NEW_S + 2.5, report
            assert first is None  # hung up on, without a word
        # The peer that called is as idle by now, and still served on the same connection.
        active.sendall(STATUS)
        assert b'"status"' in _frame(active)
    finally:
        active.close()


def _frame(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\0"):
        chunk = s.recv(65536)
        assert chunk, "the daemon closed the connection"
        data += chunk
    return data


def test_a_reload_applies_new_auth_and_shares_to_new_connections() -> None:
    with short_tempdir("tlfr") as base, DaemonProcess(base, limits={"max_connections": MAX}) as d:
        with peer(d, STRANGER, STRANGER, 1, "call") as before:
            ((name, params),) = before.json()
        assert (name, params["method"]) == ("PermissionDenied", "(any method)")
        d.sections["auth"]["read_only_gids"] = [READ_ONLY_GID, STRANGER]
        d.sections["limits"]["max_connections_per_uid"] = 2
        d.write_config()
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "reloaded config: changed" not in d.log():
            assert time.monotonic() < deadline, f"no reload after SIGHUP:\n{d.log()}"
            time.sleep(0.05)
        with peer(d, STRANGER, STRANGER, 3, "call") as after:
            answered, refused = outcomes(after.json())
        assert answered == 2, refused
        assert [(n, p["limit"], p["maximum"]) for n, p in refused] == [
            ("LimitExceeded", "max_connections_per_uid", 2)
        ]


def test_one_uid_cannot_fill_the_buffer_budget_for_everyone() -> None:
    """40 connections of one read-only uid each send a call, then ~1 MiB of a frame without
    its end, and hold it. Before, 32 of them filled a 32 MiB `max_buffered_bytes`: a writer's
    600 KB AppendBlock was refused (its connection closed) and every stream stalled. Now the
    uid holds at most its share (a quarter: 8 MiB); its connections past it are refused,
    naming the share and what it holds with the refused bytes, and the others are served."""
    limits = {
        "max_message_bytes": 1024 * 1024,
        "max_block_bytes": 1_000_000,
        "max_buffered_bytes": 32 * 1024 * 1024,
        "max_connection_buffer_bytes": 1024 * 1024,
    }
    with short_tempdir("tlbud") as base, DaemonProcess(base, limits=limits) as d:
        with Client(d.socket_path, timeout=20) as c:
            root = c.create_conversation("budget").root_context_id
        with peer(d, READERS[0], READ_ONLY_GID, 40, "partial") as hog:
            outcomes = hog.json()
            held = outcomes.count("held")
            refused = [o for o in outcomes if o != "held"]
            with Client(d.socket_path, timeout=20) as c:
                block = c.append_block(root, "user", "B" * 600_000)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(d.socket_path))
                watch = {"method": "io.timelined.Timeline.Watch", "parameters": {"after_seq": 0}}
                s.sendall(json.dumps({**watch, "more": True}).encode() + b"\0")
                buf = b""
                while b'"live":true' not in buf:  # up to the live marker: nothing stalls
                    chunk = s.recv(1 << 20)
                    assert chunk, buf[-300:]
                    buf += chunk
            hog.release()
    assert block.block.position == 1
    assert 4 <= held <= 9, outcomes  # ~1 MiB each within 8 MiB
    assert refused and all(o[0] == "LimitExceeded" for o in refused), refused
    params = refused[0][1]
    assert params["limit"] == f"max_buffered_bytes_per_uid (uid {READERS[0]}: in use + this buffer)"
    assert params["maximum"] == 8 * 1024 * 1024 and params["size"] > params["maximum"]


def test_a_uids_watchers_count_in_its_share() -> None:
    """A watcher that reads nothing while its own uid appends ~6 MB: its queue counts in the
    uid's share (2 MiB here) as in the daemon-wide budget (512 MiB) and under its own cap
    (64 MiB). Past the share it is dropped, and its stream ends with SlowConsumer once read,
    as past the daemon-wide budget. Before, the share did not see watchers' queues: one uid's
    lagging watchers could fill the whole budget, and this one held every event."""
    mib = 1024 * 1024
    limits = {
        "max_message_bytes": mib,
        "max_block_bytes": 600_000,
        "max_buffered_bytes_per_uid": 2 * mib,
    }
    appended = 30
    with short_tempdir("tlwsh") as base, DaemonProcess(base, limits=limits) as d:
        with Client(d.socket_path, timeout=20) as c:
            root = c.create_conversation("share").root_context_id
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(d.socket_path))
            watch = {"method": "io.timelined.Timeline.Watch", "parameters": {}, "more": True}
            s.sendall(json.dumps(watch).encode() + b"\0")
            buf = b""
            while b"\0" not in buf:  # the live marker: subscribed
                chunk = s.recv(1 << 20)
                assert chunk, buf
                buf += chunk
            buf = buf.split(b"\0", 1)[1]
            with Client(d.socket_path, timeout=20) as c:  # the watcher reads nothing meanwhile
                for i in range(appended):
                    c.append_block(root, "user", f"{i} " + "w" * 200_000)
            events = 0
            error = None
            while error is None and events < appended:
                while b"\0" not in buf:
                    chunk = s.recv(1 << 20)
                    assert chunk, f"closed after {events} events"
                    buf += chunk
                frame, buf = buf.split(b"\0", 1)
                reply = json.loads(frame)
                error = reply.get("error")
                if error is None:
                    events += len(reply["parameters"]["events"])
        with Client(d.socket_path, timeout=20) as c:  # the uid goes on being served
            assert c.append_block(root, "user", "after").block.content == "after"
    assert error == "io.timelined.Timeline.SlowConsumer", (error, events)
    assert events < appended
