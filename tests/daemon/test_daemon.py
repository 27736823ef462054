"""The real daemon (`python -m timelined serve`) on a real socket, called by our client library
(blocking and async), by the independent `varlink` package, by peers of other uids, and with
malformed frames."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import varlink

from tests.daemon.harness import (
    PEER_ENV,
    READ_ONLY_GID,
    STRANGER,
    DaemonProcess,
    as_uid,
    config_text,
    short_tempdir,
)
from tests.recovery.test_real_daemon import Writers
from timelined.api import ADMIN, TIMELINE
from timelined.api.exchange import join_parts
from timelined.client import AsyncClient, Client
from timelined.errors import ContextNotFound, LimitExceeded, TimelinedError


def test_blocking_and_async_clients(daemon: DaemonProcess, client: Client) -> None:
    conv = client.create_conversation("real daemon", {"source": "test"})
    appended = client.append_block(conv.root_context_id, "user", "hello over the socket")
    assert client.get_block(appended.block.id) == appended.block
    # The actor of every event is the caller: its uid, gid and pid from SO_PEERCRED.
    page = client.read_log(after_seq=appended.seq - 1, limit=1)
    event = json.loads(bytes(page.events[0]))
    assert event["seq"] == appended.seq
    assert event["actor"] == {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}

    async def use_async() -> None:
        async with AsyncClient(daemon.socket_path) as ac:
            side = await ac.spawn_sidebar(conv.root_context_id, "async side", inherit_last=1)
            history = await ac.get_history(side.id)
            assert [h.block.content for h in history] == ["hello over the socket"]
            async with anyio.create_task_group() as tg:  # concurrent calls: one pool
                for i in range(20):
                    tg.start_soon(ac.append_block, side.id, "user", f"parallel {i}")
            assert (await ac.get_context(side.id)).block_count == 20
            with pytest.raises(ContextNotFound):
                await ac.get_context("ctx_nope")

    anyio.run(use_async)
    status = client.get_status()
    assert status.boot.verdict == "clean" and status.last_seq >= 23


def test_the_independent_varlink_package(daemon: DaemonProcess) -> None:
    with varlink.Client(address=f"unix:{daemon.socket_path}") as vc:
        assert {"io.timelined.Timeline", "io.timelined.Admin"} <= set(vc.get_interfaces())
        with vc.open("org.varlink.service") as service:
            for interface in (TIMELINE, ADMIN):
                reply = service.GetInterfaceDescription(interface.name)
                text = reply["description"] if isinstance(reply, dict) else reply.description
                assert text == interface.description
                parsed = varlink.Interface(text)
                assert {m.name for m in interface.methods} <= set(parsed.members)
        # open() fetches and parses our description, then calls through it.
        with vc.open("io.timelined.Timeline") as tl:
            conv = tl.CreateConversation(name="via python-varlink", metadata={"k": [1, 2]})
            conv = conv["conversation"]
            assert conv["metadata"] == {"k": [1, 2]}
            ctx = conv["root_context_id"]
            appended = tl.AppendBlock(
                context_id=ctx, role="assistant", content="hi", tokens_output=2
            )
            assert appended["block"]["tokens_output"] == 2 and appended["seq"] > 0
            page = tl.ListBlocks(context_id=ctx, limit=10)
            assert [b["content"] for b in page["blocks"]] == ["hi"]
            with pytest.raises(varlink.VarlinkError) as err:
                tl.GetContext(id="ctx_nope")
            assert err.value.error() == "io.timelined.Timeline.ContextNotFound"
            assert err.value.parameters()["id"] == "ctx_nope"
            with pytest.raises(varlink.VarlinkError) as bad:
                tl.PauseContext(id=ctx)
                tl.PauseContext(id=ctx)
            assert bad.value.error() == "io.timelined.Timeline.InvalidTransition"
            assert bad.value.parameters()["status"] == "paused"
        with vc.open("io.timelined.Admin", namespaced=True) as admin:
            status = admin.GetStatus().status
            assert status.version and status.last_seq >= 2 and status.boot.verdict == "clean"


# The other uid's client: stdlib only, speaking Varlink itself (NUL-terminated JSON), run as
# harness.as_uid says.
PEER = r"""
import json, socket, sys

path, ctx = sys.argv[1], sys.argv[2]
TL, ADMIN = "io.timelined.Timeline.", "io.timelined.Admin."
out = {}
conn = None


def send(s, frame):
    try:
        s.sendall(frame)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused as it connected: the daemon's error waits to be read


def receive(s):
    try:
        return s.recv(65536)
    except ConnectionResetError:
        return b""


def call(method, parameters):
    # A fresh connection after a refusal: the server answers it, then hangs up.
    global conn
    if conn is None:
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(10)
        conn.connect(path)
    send(conn, json.dumps({"method": method, "parameters": parameters}).encode() + b"\0")
    data = b""
    while not data.endswith(b"\0"):
        chunk = receive(conn)
        if not chunk:
            raise ConnectionError("the server hung up before answering " + method)
        data += chunk
    reply = json.loads(data[:-1])
    if "error" not in reply:
        return "ok"
    conn.close()
    conn = None
    return reply["error"].rsplit(".", 1)[-1]


for name, method, parameters in [
    ("GetInfo", "org.varlink.service.GetInfo", {}),
    ("GetStatus", ADMIN + "GetStatus", {}),
    ("ListConversations", TL + "ListConversations", {}),
    ("GetContext", TL + "GetContext", {"id": ctx}),
    ("GetHistory", TL + "GetHistory", {"context_id": ctx}),
    ("SearchBlocks", TL + "SearchBlocks", {"query": "peer"}),
    ("ReadLog", ADMIN + "ReadLog", {"after_seq": 0}),
    ("AppendBlock", TL + "AppendBlock", {"context_id": ctx, "role": "user", "content": "sneaky"}),
    ("AppendBlocks", TL + "AppendBlocks",
     {"context_id": ctx, "blocks": [{"role": "user", "content": "sneaky"}]}),
    ("CreateConversation", TL + "CreateConversation", {"name": "sneaky"}),
    ("Reload", ADMIN + "Reload", {}),
    ("GetStatus again", ADMIN + "GetStatus", {}),
]:
    out[name] = call(method, parameters)


def refused(frame):
    # A refused call is answered, then the server hangs up.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    send(s, frame)  # refused at connect, the daemon may have closed before it arrives
    data = b""
    while True:
        chunk = receive(s)
        if not chunk:
            break
        data += chunk
    return json.loads(data.split(b"\0")[0])


create = {"method": TL + "CreateConversation", "parameters": {"name": "x"}}
out["raw"] = refused(json.dumps(create).encode() + b"\0")
out["raw admin"] = refused(b'{"method":"io.timelined.Admin.Reload","parameters":{}}\0')
print(json.dumps(out))
"""


def _as_peer(
    daemon: DaemonProcess, uid: int, gid: int, ctx: str, groups: tuple[int, ...] = ()
) -> dict[str, Any]:
    with short_tempdir("tlpeer") as where:  # 0755: the other uid may read the script
        script = where / "peer.py"
        script.write_text(PEER)
        script.chmod(0o644)
        done = subprocess.run(
            [*as_uid(uid, gid, groups), str(script), str(daemon.socket_path), ctx],
            cwd=where,
            env=PEER_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_a_peer_outside_auth_is_refused_and_disconnected(
    daemon: DaemonProcess, client: Client
) -> None:
    ctx = client.create_conversation("private").root_context_id
    before = client.get_status()
    got = _as_peer(daemon, STRANGER, STRANGER, ctx)
    refused = {k: v for k, v in got.items() if not k.startswith("raw")}
    assert set(refused.values()) == {"PermissionDenied"}, refused
    assert got["raw"]["error"] == "io.timelined.Timeline.PermissionDenied"
    assert got["raw"]["parameters"]["uid"] == STRANGER
    # Refused as it connected, before any call (and before it could take a slot).
    assert got["raw"]["parameters"]["method"] == "(any method)"
    after = client.get_status()
    assert after.last_seq == before.last_seq  # nothing was written
    admitted = before.connections.rejected_by_reason.get("admission", 0)
    assert after.connections.rejected_by_reason["admission"] == admitted + len(got)
    # Refused at connect whatever it then sends: a connection-level error, named by its home.
    assert got["raw admin"]["error"] == "io.timelined.Timeline.PermissionDenied"
    assert got["raw admin"]["parameters"]["method"] == "(any method)"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_a_read_only_peer_reads_and_cannot_write(daemon: DaemonProcess, client: Client) -> None:
    conv = client.create_conversation("shared for reading")
    client.append_block(conv.root_context_id, "user", "peer visible text")
    before = client.get_status().last_seq
    got = _as_peer(daemon, STRANGER, READ_ONLY_GID, conv.root_context_id)
    assert got["GetInfo"] == "ok"
    for reading in ("GetStatus", "ListConversations", "GetContext", "GetHistory", "ReadLog"):
        assert got[reading] == "ok", (reading, got)
    assert got["SearchBlocks"] == "ok"
    for writing in ("AppendBlock", "AppendBlocks", "CreateConversation", "Reload"):
        assert got[writing] == "PermissionDenied", (writing, got)
    assert got["GetStatus again"] == "ok"  # a new connection after the hang-up
    assert got["raw"]["error"] == "io.timelined.Timeline.PermissionDenied"
    assert got["raw"]["parameters"]["gid"] == READ_ONLY_GID
    # Declared by both interfaces: named by the interface of the method that was called.
    assert got["raw admin"]["error"] == "io.timelined.Admin.PermissionDenied"
    assert got["raw admin"]["parameters"]["method"] == "io.timelined.Admin.Reload"
    assert client.get_status().last_seq == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_a_supplementary_group_admits_a_peer(daemon: DaemonProcess, client: Client) -> None:
    """The kernel's SO_PEERGROUPS answer, over a real socket: `usermod -aG` is enough."""
    conv = client.create_conversation("shared through a supplementary group")
    before = client.get_status().last_seq
    got = _as_peer(daemon, STRANGER, STRANGER, conv.root_context_id, groups=(READ_ONLY_GID,))
    assert got["GetHistory"] == "ok" and got["ReadLog"] == "ok", got
    assert got["AppendBlock"] == "PermissionDenied", got
    assert got["raw"]["parameters"]["gid"] == STRANGER  # admitted by the group, not the gid
    assert client.get_status().last_seq == before


def _exchange(path: Path, payload: bytes, *, until_closed: bool) -> list[dict[str, Any]]:
    """Send raw bytes; the reply frames (all of them until EOF when `until_closed`)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading a frame it refused: its answer is still there
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if not until_closed and b"\0" in data:
                break
    return [json.loads(f) for f in data.split(b"\0") if f]


def test_bad_frames_get_named_errors_and_others_keep_being_served(
    daemon: DaemonProcess, client: Client
) -> None:
    ctx = client.create_conversation("neighbour").root_context_id
    stop = threading.Event()
    answers: list[int] = []
    failures: list[BaseException] = []

    def neighbour() -> None:
        with Client(daemon.socket_path, timeout=10) as c:
            while not stop.is_set():
                try:
                    c.append_block(ctx, "user", "still here")
                    answers.append(1)
                except BaseException as exc:
                    failures.append(exc)
                    return

    thread = threading.Thread(target=neighbour)
    thread.start()
    try:
        huge = b'{"method":"io.timelined.Admin.GetStatus","parameters":{"pad":"'
        huge += b"x" * (10 * 1024 * 1024) + b'"}}\0'
        cases: list[tuple[bytes, str, bool]] = [
            (b"this is not json\0", "io.timelined.Timeline.ProtocolError", True),
            (
                b'{"method":"io.timelined.Admin.Get\0Status"}\0',
                "io.timelined.Timeline.ProtocolError",
                True,
            ),
            (b"[1, 2, 3]\0", "io.timelined.Timeline.ProtocolError", True),
            (b'"a string"\0', "io.timelined.Timeline.ProtocolError", True),
            (huge, "io.timelined.Timeline.LimitExceeded", True),
            (
                b'{"method":"io.timelined.Timeline.GetContext","parameters":{"id":1}}\0',
                "org.varlink.service.InvalidParameter",
                False,
            ),
            (
                b'{"method":"io.timelined.Timeline.Nope"}\0',
                "org.varlink.service.MethodNotFound",
                False,
            ),
            (b'{"method":"io.nope.Thing.Do"}\0', "org.varlink.service.InterfaceNotFound", False),
        ]
        for payload, error, closes in cases:
            before = len(answers)
            frames = _exchange(daemon.socket_path, payload, until_closed=closes)
            assert frames and frames[0].get("error") == error, (payload[:60], frames)
            if error.endswith("InvalidParameter"):
                assert frames[0]["parameters"] == {"parameter": "id"}  # the standard's, exactly
            if error.endswith("LimitExceeded"):
                assert frames[0]["parameters"]["limit"] == "max_message_bytes"
            deadline = time.monotonic() + 5
            while len(answers) == before and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(answers) > before, "the neighbour stopped being served"
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures
    assert client.get_status().fatal is None


def test_null_for_an_optional_parameter_means_absent(daemon: DaemonProcess, client: Client) -> None:
    """The interface files declare `limit: ?int`: null is allowed there and means the default."""
    client.create_conversation("nulls")
    calls = [
        ("io.timelined.Timeline.ListConversations", {"include_archived": None, "limit": None}),
        ("io.timelined.Timeline.SearchBlocks", {"query": "nulls", "limit": None}),
        ("io.timelined.Admin.ReadLog", {"after_seq": None, "limit": None}),
        ("io.timelined.Admin.Verify", {"wait": None}),
    ]
    replies = {}
    for method, params in calls:
        payload = json.dumps({"method": method, "parameters": params}).encode() + b"\0"
        frames = _exchange(daemon.socket_path, payload, until_closed=False)
        assert frames and "error" not in frames[0], (method, frames)
        replies[method] = frames[0]["parameters"]
    assert replies["io.timelined.Admin.ReadLog"]["events"][0]["seq"] == 1  # after_seq 0
    # The call's own flags are `?bool` too.
    flags = b'{"method":"io.timelined.Admin.GetStatus","more":null,"oneway":null}\0'
    frames = _exchange(daemon.socket_path, flags, until_closed=False)
    assert frames and "error" not in frames[0], frames


def test_a_nullable_field_may_be_left_out(daemon: DaemonProcess, client: Client) -> None:
    """`parent_id: ?string` (a root's is null) may be absent, as the interface file says."""
    conv = client.create_conversation("no parent_id")
    document = msgspec.to_builtins(join_parts(list(client.export_conversation(conv.id))))
    for ctx in document["header"]["contexts"]:
        if ctx["parent_id"] is None:
            del ctx["parent_id"]
    call = {
        "method": "io.timelined.Timeline.ImportConversation",
        "parameters": {"document": document},
    }
    frames = _exchange(daemon.socket_path, json.dumps(call).encode() + b"\0", until_closed=False)
    assert frames and "error" not in frames[0], frames
    assert frames[0]["parameters"]["conversation"]["name"] == "no parent_id"


def test_an_upgrade_is_refused(daemon: DaemonProcess) -> None:
    """No method upgrades the connection: answering normally would confirm an upgrade."""
    upgrade = b'{"method":"io.timelined.Admin.GetStatus","upgrade":true}\0'
    frames = _exchange(daemon.socket_path, upgrade, until_closed=False)
    assert frames[0]["error"] == "org.varlink.service.InvalidParameter", frames
    assert frames[0]["parameters"]["parameter"] == "upgrade"


def wait_for_block_limit(daemon: DaemonProcess, c: Client, ctx: str, maximum: int) -> None:
    """Append blocks larger than `maximum` until the daemon refuses one naming that limit."""
    deadline = time.monotonic() + 15
    while True:
        try:
            c.append_block(ctx, "user", "x" * (maximum + 476))
        except LimitExceeded as refused:
            assert refused.params["maximum"] == maximum
            return
        assert time.monotonic() < deadline, f"no reload to {maximum}:\n{daemon.log()}"
        time.sleep(0.1)


def test_editing_config_toml_reloads_without_a_call() -> None:
    """The file watcher alone applies an edit; it watches the config's directory, not the state
    under it (./var in the default layout), so writes do not wake it."""
    with short_tempdir() as base, DaemonProcess(base) as daemon:
        assert daemon.state_dir.parent == daemon.config_path.parent
        with Client(daemon.socket_path, timeout=30) as c:
            ctx = c.create_conversation("watched").root_context_id
            for i in range(50):  # writes under the watched directory: no reload comes of them
                c.append_block(ctx, "user", f"before the edit {i}")
            assert "config file changed" not in daemon.log()
            # A symlink loop beside the config (resolving it raises): not ours, no harm done.
            (base / "loop-a").symlink_to(base / "loop-b")
            (base / "loop-b").symlink_to(base / "loop-a")
            time.sleep(0.5)  # past the watcher's debounce
            assert c.get_status().fatal is None
            daemon.sections["limits"] = {"max_block_bytes": 2048}
            daemon.write_config()
            wait_for_block_limit(daemon, c, ctx, 2048)
        assert "config file changed: reloading" in daemon.log()
        assert "watcher stopped" not in daemon.log()


def test_sighup_reloads_what_the_watcher_does_not_see() -> None:
    """config.toml a symlink into another directory: an edit of its target reaches the daemon
    by SIGHUP alone (the watcher sees the link's directory only, as documented); re-pointing
    the link (`ln -sfn`) is seen by the watcher."""
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        (base / "etc").mkdir()
        daemon.config_path.symlink_to(base / "etc" / "config.toml")
        with daemon, Client(daemon.socket_path, timeout=30) as c:
            ctx = c.create_conversation("hup").root_context_id
            c.append_block(ctx, "user", "x" * 4096)
            daemon.sections["limits"] = {"max_block_bytes": 2048}
            daemon.write_config()  # through the link: the target in etc/ changes
            time.sleep(1.0)  # longer than the watcher's debounce: it would have reloaded by now
            c.append_block(ctx, "user", "y" * 4096)
            daemon.signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while "reloaded config: changed limits.max_block_bytes" not in daemon.log():
                assert time.monotonic() < deadline, f"no reload after SIGHUP:\n{daemon.log()}"
                time.sleep(0.05)
            with pytest.raises(LimitExceeded) as big:
                c.append_block(ctx, "user", "z" * 4096)
            assert big.value.params["maximum"] == 2048
            assert "received SIGHUP: reloading the config" in daemon.log()
            assert "config file changed" not in daemon.log()

            # A deploy that re-points the link at a new file (ln -sfn: a new link renamed over).
            daemon.sections["limits"] = {"max_block_bytes": 1024}
            (base / "etc2").mkdir()
            (base / "etc2" / "config.toml").write_text(
                config_text(daemon.sections), encoding="utf-8"
            )
            (base / "new-link").symlink_to(base / "etc2" / "config.toml")
            (base / "new-link").rename(daemon.config_path)
            wait_for_block_limit(daemon, c, ctx, 1024)
            assert "config file changed: reloading" in daemon.log()
            assert c.get_status().fatal is None


def test_sigterm_under_load_keeps_every_acknowledged_block_and_reload_applies() -> None:
    with short_tempdir() as base:
        first = DaemonProcess(base).start()
        try:
            with Client(first.socket_path, timeout=30) as c:
                ctx = c.create_conversation("load").root_context_id
                # Reload: a new limit applies at once (the file watcher may have applied it
                # first, in which case Reload finds nothing left to change).
                first.sections["limits"] = {"max_block_bytes": 2048}
                first.write_config()
                reply = c.reload()
                assert reply.changed in (["limits.max_block_bytes"], [])
                with pytest.raises(LimitExceeded) as big:
                    c.append_block(ctx, "user", "x" * 4096)
                assert big.value.params["maximum"] == 2048

            acked: list[list[str]] = [[] for _ in range(16)]

            def writer(i: int) -> None:
                with Client(first.socket_path, timeout=30) as wc:
                    n = 0
                    while True:
                        try:
                            r = wc.append_block(ctx, "user", f"w{i}-{n}", id=f"blk_w{i}_{n}")
                        except TimelinedError:
                            return
                        acked[i].append(r.block.id)
                        n += 1

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            while sum(map(len, acked)) < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            first.signal(signal.SIGTERM)
            assert first.stop() == 0
            for t in threads:
                t.join(30)
        finally:
            first.kill()
        assert (base / "state" / "clean-shutdown").exists()
        total = sum(map(len, acked))
        assert total >= 200

        second = DaemonProcess(base).start()
        try:
            with Client(second.socket_path, timeout=30) as c:
                status = c.get_status()
                assert status.boot.verdict == "clean" and status.boot.fast_path
                stored = set()
                after: int | None = None
                while True:
                    page = c.list_blocks(ctx, after=after, limit=1000)
                    stored |= {b.id for b in page.blocks}
                    if page.next is None:
                        break
                    after = page.next
                missing = [b for ids in acked for b in ids if b not in stored]
                assert not missing, f"{len(missing)} acknowledged blocks lost of {total}"
        finally:
            assert second.stop() == 0


def test_the_daemon_runs_on_uvloop_when_it_is_installed(daemon: DaemonProcess) -> None:
    if importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed (it is a dependency on Linux only)")
    assert daemon.proc is not None
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text(encoding="utf-8")
    assert "uvloop" in maps, "the daemon did not load uvloop's event loop"


def test_signals_during_a_stop_do_not_cut_it_short() -> None:
    """A second SIGTERM, a SIGINT (a second Ctrl-C) or a SIGHUP while the daemon stops under
    load: logged and ignored; the stop finishes with the marker and exit 0."""
    with short_tempdir() as base:
        daemon = DaemonProcess(base).start()
        try:
            with Client(daemon.socket_path, timeout=30) as c:
                ctx = c.create_conversation("stop").root_context_id
            with Writers(daemon.socket_path, ctx, 0) as writers:
                time.sleep(0.5)
                writers.wait_acked(1)  # the stop comes under load, however slow the machine
                assert daemon.proc is not None
                daemon.signal(signal.SIGTERM)
                for _ in range(2000):  # until it has exited: every 2 ms, each of the three
                    if daemon.proc.poll() is not None:
                        break
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                        try:
                            daemon.signal(signum)
                        except ProcessLookupError:
                            break
                    time.sleep(0.002)
                code = daemon.proc.wait(30)
                daemon.proc = None
        finally:
            daemon.kill()
        assert code == 0, daemon.log()
        assert (daemon.state_dir / "clean-shutdown").exists()
        text = daemon.log()
        # SIGTERMs sent close together may reach the daemon as one (the kernel keeps one pending
        # signal per number); the SIGINT right behind the first SIGTERM always comes "again".
        assert "again: already stopping" in text, text
        assert "Traceback" not in text
