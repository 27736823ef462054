"""The client transports (blocking and async) and how the listening socket is set up."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import anyio
import pytest

from tests.varlink.demo import INFO, TEST, CountReply, EchoReply, Probe, handlers, serving
from timelined.varlink.client import AsyncConnection, AsyncVarlinkClient, Connection, VarlinkClient
from timelined.varlink.errors import ConnectionFailed, ProtocolViolation, VarlinkErrorReply
from timelined.varlink.server import VarlinkServer, bind_unix_socket, listener_from_socket

ECHO = "io.timelined.Test.Echo"


# --- blocking client ---------------------------------------------------------------------------


async def test_blocking_client_calls_streams_and_errors(tmp_path: Path) -> None:
    async with serving(tmp_path) as r:

        def work() -> None:
            with VarlinkClient(r.path, timeout=5) as c:
                assert c.call(ECHO, {"text": "a"}) == {"text": "a"}
                assert c.call_typed(ECHO, {"text": "b"}, EchoReply) == EchoReply("b")
                assert [x["i"] for x in c.call("io.timelined.Test.Count", {"n": 3}, more=True)] == [
                    0,
                    1,
                    2,
                ]
                typed = list(c.stream_typed("io.timelined.Test.Count", {"n": 2}, CountReply))
                assert typed == [CountReply(0), CountReply(1)]
                with pytest.raises(VarlinkErrorReply) as err:
                    c.call("io.timelined.Test.Fail", {"id": "q"})
                assert err.value.name == "io.timelined.Test.ContextNotFound"
                assert c.call(ECHO, {"text": "c"}, oneway=True) == {}
                assert c.call(ECHO, {"text": "d"}) == {"text": "d"}

        await anyio.to_thread.run_sync(work)
        assert r.server.stats().connections_total == 1  # one pooled connection did it all
        assert r.probe.oneway_calls == ["c"]


async def test_blocking_client_from_many_threads(tmp_path: Path) -> None:
    async with serving(tmp_path) as r:
        errors: list[BaseException] = []

        def work() -> None:
            with VarlinkClient(r.path, timeout=5) as c:

                def worker(n: int) -> None:
                    try:
                        for i in range(50):
                            text = f"{n}-{i}"
                            assert c.call(ECHO, {"text": text}) == {"text": text}
                    except BaseException as exc:
                        errors.append(exc)

                threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

        await anyio.to_thread.run_sync(work)
        assert errors == []
        assert r.server.stats().connections_total <= 8


async def test_blocking_client_timeout_discards_the_connection(tmp_path: Path) -> None:
    async with serving(tmp_path) as r:

        def work() -> None:
            with VarlinkClient(r.path, timeout=0.1) as c:
                with pytest.raises(ConnectionFailed, match="no reply within"):
                    c.call("io.timelined.Test.Slow", {"seconds": 0.3})
                # The late reply must not be taken for the next call's. That call gets a new
                # connection; a generous timeout for it, since 0.1 s for an echo can pass on a
                # loaded machine (a reused connection would still answer {"slept": 0.3}).
                c.timeout = 30
                assert c.call(ECHO, {"text": "fresh"}) == {"text": "fresh"}

        await anyio.to_thread.run_sync(work)


def _serve_replies(path: Path, replies: list[bytes]) -> threading.Thread:
    """A peer that answers one call per connection with each raw reply in turn."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(len(replies))

    def run() -> None:
        with listener:
            for reply in replies:
                peer, _ = listener.accept()
                with peer:
                    peer.recv(65536)
                    peer.sendall(reply + b"\0")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_null_members_of_a_reply_mean_absent_and_bad_ones_are_protocol_errors(
    tmp_path: Path,
) -> None:
    """A reply is (parameters: ?object, continues: ?bool, error: ?string) by the protocol."""
    path = tmp_path / "peer.sock"
    replies = [
        b'{"parameters":null}',
        b'{"parameters":{"a":1},"continues":null,"error":null}',
        b'{"error":"x.y.Failed","parameters":null}',
        b'{"parameters":[1]}',
    ]
    thread = _serve_replies(path, replies)
    with VarlinkClient(path, timeout=5, max_idle=0) as c:
        assert c.call("x.y.Do") == {}
        assert c.call("x.y.Do") == {"a": 1}
        with pytest.raises(VarlinkErrorReply) as err:
            c.call("x.y.Do")
        assert (err.value.name, err.value.parameters) == ("x.y.Failed", {})
        with pytest.raises(ProtocolViolation):
            c.call("x.y.Do")  # was a bare msgspec.ValidationError
    thread.join(5)


def test_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nothing.sock"
    with pytest.raises(ConnectionFailed, match="no socket there") as err:
        Connection.open(path)
    assert err.value.path == str(path)
    with VarlinkClient(path) as c, pytest.raises(ConnectionFailed):
        c.call(ECHO, {"text": "x"})


def test_refused_socket_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))  # bound, never listening: what a crashed daemon leaves behind
    s.close()
    with pytest.raises(ConnectionFailed, match="refused"):
        Connection.open(path)


async def test_async_missing_socket_and_typed_calls(tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed, match="no socket there"):
        await AsyncConnection.open(tmp_path / "nothing.sock")
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:
        assert await c.call_typed(ECHO, {"text": "t"}, EchoReply) == EchoReply("t")
        got = [x async for x in c.stream_typed("io.timelined.Test.Count", {"n": 2}, CountReply)]
        assert got == [CountReply(0), CountReply(1)]


async def test_async_client_concurrent_tasks(tmp_path: Path) -> None:
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:

        async def worker(n: int) -> None:
            for i in range(20):
                assert await c.call(ECHO, {"text": f"{n}/{i}"}) == {"text": f"{n}/{i}"}

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(worker, n)
        assert r.server.stats().connections_total <= 10


async def test_daemon_gone_mid_call(tmp_path: Path) -> None:
    async with serving(tmp_path, grace_s=0.1) as r:
        conn = await AsyncConnection.open(r.path)
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                with pytest.raises(ConnectionFailed, match="closed before the reply"):
                    await conn.call("io.timelined.Test.Slow", {"seconds": 10})

            tg.start_soon(call)
            await anyio.sleep(0.05)
            await r.server.shutdown(grace_s=0.1)
        assert conn.broken
        conn.close()


# --- the listening socket ----------------------------------------------------------------------


def test_bind_creates_the_parent_0750_and_applies_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "d.sock"
    sock = bind_unix_socket(path, 0o660)
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        sock.close()


def test_bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    live = bind_unix_socket(path)
    with pytest.raises(OSError, match="another server"):
        bind_unix_socket(path)
    live.close()  # the file stays, nobody listens: stale
    again = bind_unix_socket(path, 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        bind_unix_socket(path)
    assert path.read_text() == "not a socket"


async def test_serving_an_inherited_listening_socket(tmp_path: Path) -> None:
    """Socket activation: the socket arrives bound and listening (here: made by us)."""
    path = tmp_path / "activated.sock"
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.bind(os.fspath(path))
    raw.listen(16)
    inherited = socket.socket(fileno=os.dup(raw.fileno()))  # as if from LISTEN_FDS
    raw.close()
    server = VarlinkServer(INFO)
    server.register(TEST, handlers(Probe()))
    listener = await listener_from_socket(inherited)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, listener)
        async with AsyncVarlinkClient(path) as c:
            assert await c.call(ECHO, {"text": "activated"}) == {"text": "activated"}
        await server.shutdown(1)


def test_registration_mistakes_are_refused() -> None:
    server = VarlinkServer(INFO)
    with pytest.raises(ValueError, match="declares no methods"):
        server.register(TEST, {"Nope": handlers(Probe())["Echo"]})
    server.register(TEST, {})
    with pytest.raises(ValueError, match="already registered"):
        server.register(TEST, {})
