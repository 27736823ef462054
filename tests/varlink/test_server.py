"""The server on a real socket: dispatch, errors, bad frames, limits, streams, shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.varlink.demo import (
    BIG_PAD,
    BagParams,
    Running,
    raw_connect,
    read_frames,
    read_until_closed,
    serving,
    wait_until,
)
from timelined.errors import PermissionDenied
from timelined.varlink.client import AsyncConnection, AsyncVarlinkClient
from timelined.varlink.errors import VarlinkErrorReply
from timelined.varlink.interface import normalize_optional
from timelined.varlink.server import PeerCredentials, ServerLimits

ECHO = "io.timelined.Test.Echo"


def call_frame(method: str, parameters: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"method": method, "parameters": parameters}) + b"\0"


def call(method: str, parameters: Any = None, **flags: Any) -> bytes:
    msg: dict[str, Any] = {"method": method, **flags}
    if parameters is not None:
        msg["parameters"] = parameters
    return msgspec.json.encode(msg) + b"\0"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    # pytest-asyncio may run a fixture's setup and teardown in different tasks, and a task
    # group must be left in the task that entered it: serve from a task of our own.
    done = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()

    async def host() -> None:
        async with serving(tmp_path) as r:
            ready.set_result(r)
            await done.wait()

    task = asyncio.create_task(host())
    yield await ready
    done.set()
    await task


class Bystander:
    """A second client that keeps calling while a test misbehaves on another connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers = 0
        self.stop = anyio.Event()

    async def run(self) -> None:
        conn = await AsyncConnection.open(self.path)
        try:
            while not self.stop.is_set():
                assert await conn.call(ECHO, {"text": "still here"}) == {"text": "still here"}
                self.answers += 1
                await anyio.sleep(0.005)
        finally:
            conn.close()


async def with_bystander(path: Path, body: Any) -> int:
    b = Bystander(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        await anyio.sleep(0.02)
        before = b.answers
        await body()
        await anyio.sleep(0.05)
        b.stop.set()
    assert b.answers > before, "the other client got no answers meanwhile"
    return b.answers


# --- calls and named errors --------------------------------------------------------------------


async def test_echo_getinfo_and_description(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        assert await c.call(ECHO, {"text": "ab", "times": 3}) == {"text": "ababab"}
        info = await c.call("org.varlink.service.GetInfo")
        assert info["interfaces"] == ["org.varlink.service", "io.timelined.Test"]
        assert info["product"] == "test"
        desc = await c.call(
            "org.varlink.service.GetInterfaceDescription", {"interface": "io.timelined.Test"}
        )
        assert desc["description"].startswith("# A demo interface")
        with pytest.raises(VarlinkErrorReply) as err:
            await c.call("org.varlink.service.GetInterfaceDescription", {"interface": "x.y"})
        assert err.value.name == "org.varlink.service.InterfaceNotFound"
        assert err.value.parameters == {"interface": "x.y"}


T = "io.timelined.Test."
SVC = "org.varlink.service."


@pytest.mark.parametrize(
    ("method", "params", "name", "expected"),
    [
        (T + "Fail", {"id": "ctx_1"}, "io.timelined.Test.ContextNotFound", {"id": "ctx_1"}),
        (T + "Nope", {}, SVC + "MethodNotFound", {"method": T + "Nope"}),
        ("io.nope.Thing.Do", {}, SVC + "InterfaceNotFound", {"interface": "io.nope.Thing"}),
        ("NoDots", {}, SVC + "InterfaceNotFound", {"interface": ""}),
        (T + "Unimplemented", {}, SVC + "MethodNotImplemented", {"method": T + "Unimplemented"}),
        (ECHO, {"text": 5}, SVC + "InvalidParameter", {"parameter": "text"}),
        (ECHO, {"text": "1", "times": "2"}, SVC + "InvalidParameter", {"parameter": "times"}),
        (ECHO, {"text": "1", "times": 0}, SVC + "InvalidParameter", {"parameter": "times"}),
        (ECHO, {}, SVC + "InvalidParameter", {"parameter": "text"}),
        (ECHO, {"text": "x", "color": "red"}, SVC + "InvalidParameter", {"parameter": "color"}),
        (ECHO, [1, 2], SVC + "InvalidParameter", {"parameter": "parameters"}),
        (
            T + "Bag",
            {"items": [{"name": "a", "kind": "odd"}]},
            SVC + "InvalidParameter",
            {"parameter": "items[0].kind"},
        ),
        (
            T + "Bag",
            {"items": [{"kind": "plain"}]},
            SVC + "InvalidParameter",
            {"parameter": "items[0].name"},
        ),
        (T + "Boom", {}, "io.timelined.Timeline.InternalError", {"exception": "RuntimeError"}),
    ],
)
async def test_named_errors(
    running: Running, method: str, params: Any, name: str, expected: dict[str, Any]
) -> None:
    conn = await AsyncConnection.open(running.path)
    try:
        with pytest.raises(VarlinkErrorReply) as err:
            await conn.call(method, params)
        assert err.value.name == name
        if name.startswith(SVC):  # the standard's parameters, exactly: nothing it lacks
            assert err.value.parameters == expected
        else:
            assert expected.items() <= err.value.parameters.items()
        # The connection survives every one of these.
        assert await conn.call(ECHO, {"text": "ok"}) == {"text": "ok"}
    finally:
        conn.close()


async def test_timelined_error_carries_its_params(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        with pytest.raises(VarlinkErrorReply) as err:
            await c.call("io.timelined.Test.Fail", {"id": "ctx_9"})
    assert err.value.parameters == {"id": "ctx_9", "message": "no context with id 'ctx_9'"}


async def test_null_or_missing_parameters_mean_none(running: Running) -> None:
    s = await raw_connect(running.path)
    async with s:
        null = b'{"method":"io.timelined.Test.WhoAmI","parameters":null}\0'
        await s.send(call("io.timelined.Test.WhoAmI") + null)
        replies = await read_frames(s, 2)
    assert all("error" not in r for r in replies)


async def test_upgrade_is_refused_not_confirmed(running: Running) -> None:
    """A plain reply to `upgrade: true` would confirm an upgrade the server never makes."""
    s = await raw_connect(running.path)
    async with s:
        await s.send(call(ECHO, {"text": "a"}, upgrade=True) + call(ECHO, {"text": "b"}))
        replies = await read_frames(s, 2)
    assert replies[0]["error"] == SVC + "InvalidParameter"
    assert replies[0]["parameters"] == {"parameter": "upgrade"}  # the standard's, exactly
    assert replies[1] == {"parameters": {"text": "b"}}  # still Varlink after the refusal


async def test_null_call_flags_mean_false(running: Running) -> None:
    """A call declares `oneway: ?bool, more: ?bool`: null is no protocol error."""
    s = await raw_connect(running.path)
    async with s:
        flags = b'{"method":"io.timelined.Test.Echo","parameters":{"text":"a"},'
        await s.send(flags + b'"more":null,"oneway":null}\0' + call(ECHO, {"text": "b"}))
        replies = await read_frames(s, 2)
    assert replies == [{"parameters": {"text": "a"}}, {"parameters": {"text": "b"}}]


async def test_null_for_a_field_with_a_default_means_absent(running: Running) -> None:
    """`?T` in the interface file allows null: a field with a default takes null as absent."""
    s = await raw_connect(running.path)
    async with s:
        item = {"name": "a", "kind": "plain", "tags": None, "extra": None}
        await s.send(
            call(ECHO, {"text": "ab", "times": None})
            + call(T + "Bag", {"items": [item], "counts": None})
            + call(ECHO, {"text": None, "times": None})  # a required field stays required
            + call(ECHO, {"text": "x", "times": None, "color": None})  # unknown stays unknown
        )
        replies = await read_frames(s, 4)
    assert replies[0] == {"parameters": {"text": "ab"}}
    assert replies[1] == {"parameters": {"total": 0, "names": ["a"]}}
    assert replies[2]["error"] == SVC + "InvalidParameter"
    assert replies[2]["parameters"]["parameter"] == "text"
    assert replies[3]["error"] == SVC + "InvalidParameter"
    assert replies[3]["parameters"]["parameter"] == "color"


def test_nulls_inside_an_object_value_are_kept() -> None:
    value = {"items": [{"name": "a", "kind": "plain", "tags": None, "extra": {"k": None}}]}
    assert normalize_optional(BagParams, value) == {
        "items": [{"name": "a", "kind": "plain", "extra": {"k": None}}]
    }


async def test_peer_credentials(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        me = await c.call("io.timelined.Test.WhoAmI")
    assert me == {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}


async def test_oneway_gets_no_reply_but_runs(running: Running) -> None:
    s = await raw_connect(running.path)
    async with s:
        await s.send(call(ECHO, {"text": "quiet"}, oneway=True) + call(ECHO, {"text": "loud"}))
        await s.send(call("io.timelined.Test.Fail", {"id": "x"}, oneway=True))
        await s.send(call(ECHO, {"text": "last"}))
        replies = await read_frames(s, 2)
    assert replies == [{"parameters": {"text": "loud"}}, {"parameters": {"text": "last"}}]
    assert running.probe.oneway_calls == ["quiet"]


# --- pipelining --------------------------------------------------------------------------------


async def test_100_pipelined_calls_answered_in_order(running: Running) -> None:
    frames = []
    for i in range(100):
        if i % 10 == 3:
            frames.append(call(ECHO, {"text": i}))  # wrong type: an error, in its place
        elif i % 10 == 7:
            frames.append(call("io.timelined.Test.Slow", {"seconds": 0.001}))
        else:
            frames.append(call(ECHO, {"text": str(i)}))
    s = await raw_connect(running.path)
    async with s:
        await s.send(b"".join(frames))
        replies = await read_frames(s, 100)
    for i, reply in enumerate(replies):
        if i % 10 == 3:
            assert reply["error"] == "org.varlink.service.InvalidParameter"
        elif i % 10 == 7:
            assert reply["parameters"] == {"slept": 0.001}
        else:
            assert reply["parameters"] == {"text": str(i)}


# --- bad frames --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"this is not json\0",
        b"\xff\xfe\x00",  # not UTF-8
        b'{"method":"io.timelined.Test.Echo","parameters":{"t":"a\0b"}}\0',  # NUL inside
        b"[1]\0",
        b'"x"\0',
        b'{"parameters":{}}\0',
        b'{"method":["x"]}\0',
    ],
)
async def test_bad_frames_get_an_error_and_a_close(running: Running, payload: bytes) -> None:
    async def misbehave() -> None:
        s = await raw_connect(running.path)
        async with s:
            # A good call first: it is answered before the bad frame's error.
            await s.send(call(ECHO, {"text": "before"}) + payload + call(ECHO, {"text": "after"}))
            replies = await read_until_closed(s)
        assert replies[0] == {"parameters": {"text": "before"}}
        assert replies[1]["error"] == "io.timelined.Timeline.ProtocolError"
        assert replies[1]["parameters"]["reason"]
        assert len(replies) == 2  # nothing after the bad frame is trusted

    await with_bystander(running.path, misbehave)
    assert running.server.stats().protocol_errors_total == 1


async def test_ten_megabyte_frame_is_refused_without_reading_it(tmp_path: Path) -> None:
    limits = ServerLimits(max_message_bytes=64 * 1024)
    async with serving(tmp_path, limits=limits) as r:

        async def misbehave() -> None:
            s = await raw_connect(r.path)
            async with s:
                body = b'{"method":"io.timelined.Test.Echo","parameters":{"text":"'
                body += b"x" * (10 * 1024 * 1024) + b'"}}\0'
                try:
                    await s.send(body)
                except (anyio.BrokenResourceError, OSError):
                    pass  # the server may hang up before we finish: the error is still there
                replies = await read_until_closed(s)
            assert len(replies) == 1
            err = replies[0]
            assert err["error"] == "io.timelined.Timeline.LimitExceeded"
            assert err["parameters"]["limit"] == "max_message_bytes"
            assert err["parameters"]["maximum"] == 64 * 1024
            assert err["parameters"]["size"] > 64 * 1024

        await with_bystander(r.path, misbehave)


async def test_a_lone_surrogate_escape_is_named_not_called_truncated(running: Running) -> None:
    """msgspec reports `"\\ud800"` (a high surrogate with no low one after it) as "Input data
    was truncated", which a whole frame is not: the error names the invalid string."""
    for where in (b'"text":"a\\ud800b"', b'"text":"\\ud800"'):
        s = await raw_connect(running.path)
        async with s:
            await s.send(b'{"method":"io.timelined.Test.Echo","parameters":{' + where + b"}}\0")
            replies = await read_until_closed(s)
        assert replies[0]["error"] == "io.timelined.Timeline.ProtocolError"
        reason = replies[0]["parameters"]["reason"]
        assert "lone UTF-16 surrogate" in reason and "truncated" not in reason, reason
    # A frame that really ends inside a string is still called truncated.
    s = await raw_connect(running.path)
    async with s:
        await s.send(b'{"method":"io.timelined.Test.Echo","parameters":{"text":"ab\0')
        replies = await read_until_closed(s)
    assert "truncated" in replies[0]["parameters"]["reason"]


async def test_peer_hanging_up_mid_frame_is_harmless(running: Running) -> None:
    async def misbehave() -> None:
        s = await raw_connect(running.path)
        await s.send(b'{"method":"io.timelined.Test.Ec')
        await s.aclose()

    await with_bystander(running.path, misbehave)


# --- limits ------------------------------------------------------------------------------------


async def test_excess_connection_gets_a_polite_error(tmp_path: Path) -> None:
    async with serving(tmp_path, limits=ServerLimits(max_connections=3)) as r:
        conns = [await AsyncConnection.open(r.path) for _ in range(3)]
        for c in conns:
            assert await c.call(ECHO, {"text": "in"}) == {"text": "in"}
        extra = await AsyncConnection.open(r.path)
        with pytest.raises(VarlinkErrorReply) as err:
            await extra.call(ECHO, {"text": "me too"})
        extra.close()
        assert err.value.name == "io.timelined.Timeline.LimitExceeded"
        assert err.value.parameters["limit"] == "max_connections"
        assert err.value.parameters["maximum"] == 3
        assert r.server.stats().connections_rejected == 1
        conns.pop().close()
        await wait_until(lambda: r.server.stats().connections_open < 3)
        again = await AsyncConnection.open(r.path)
        assert await again.call(ECHO, {"text": "now"}) == {"text": "now"}
        for c in [*conns, again]:
            c.close()


async def test_idle_connections_are_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, limits=ServerLimits(idle_timeout_s=0.3)) as r:
        s = await raw_connect(r.path)
        async with s:
            await s.send(call(ECHO, {"text": "hi"}))
            assert await read_frames(s, 1) == [{"parameters": {"text": "hi"}}]
            with anyio.fail_after(2):
                assert await read_until_closed(s) == []
        # A connection that is busy (a long call) is not idle.
        c = await AsyncConnection.open(r.path)
        assert await c.call("io.timelined.Test.Slow", {"seconds": 0.6}) == {"slept": 0.6}
        c.close()


async def test_a_flood_of_refused_connections_logs_a_line_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused connection logged its own line (a 15 s flood: 340 lines); now at most one
    a second, and the next (or the idle sweeper's, after a burst) says how many were left
    out."""
    caplog.set_level("INFO", logger="timelined.varlink")
    async with serving(tmp_path, limits=ServerLimits(max_connections=1)) as r:
        held = await raw_connect(r.path)
        await held.send(call_frame(ECHO, {"text": "x"}))
        await read_frames(held, 1)

        async def refused() -> None:
            s = await raw_connect(r.path)
            async with s:
                (reply,) = await read_until_closed(s)
            assert reply["error"] == "io.timelined.Timeline.LimitExceeded"

        for _ in range(30):
            await refused()
        # The burst is over: its count is logged without a next one, by the idle sweeper (its
        # ticks are up to 1 s apart, later on a loaded machine), and that line starts a second
        # of its own: the next refusal must come after it to get a line.
        await anyio.sleep(3.5)
        await refused()
        await anyio.sleep(0.1)
        for _ in range(3):
            await refused()
        await anyio.sleep(1.1)
        await refused()
        await held.aclose()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines[0].startswith("refused a connection of uid")
    assert lines[1].startswith("refused 29 more connections since the last such line")
    assert lines[2].startswith("refused a connection of uid") and "more" not in lines[2]
    # The 3 are counted in the last refusal's line, or by the sweeper just before it.
    if len(lines) == 4:
        assert lines[3].endswith("(and 3 more connections refused since the last such line)")
    else:
        assert len(lines) == 5, lines
        assert lines[3].startswith("refused 3 more connections since the last such line")
        assert "more" not in lines[4]


async def test_only_replies_the_socket_did_not_take_count_in_the_budget(
    running: Running,
) -> None:
    """A peer that reads nothing: the replies the kernel took are out of the daemon's hands,
    only the rest of the batch waits in the daemon and counts in the buffer budget. So what
    the peer can read plus what is counted is whole replies. Before, a batch counted whole
    while its rest waited, the part in the kernel included (a part of a reply more)."""
    frame = call(ECHO, {"text": "x" * 1000, "times": 60})
    reply_size = len(b'{"parameters":{"text":""}}\0') + 60_000
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(os.fspath(running.path))
    try:
        peer.sendall(frame * 40)  # 2.4 MB of replies: more than the socket holds
        await wait_until(lambda: running.server.buffers.used > 0)
        await anyio.sleep(0.2)  # the connection waits for the peer, which reads nothing
        counted = running.server.buffers.used
        assert running.server.buffers.held_by(os.getuid()) == counted
        # Read what the kernel holds, without giving the server (this event loop) a turn.
        peer.setblocking(False)
        readable = 0
        while True:
            try:
                readable += len(peer.recv(1 << 20))
            except BlockingIOError:
                break
        assert (readable + counted) % reply_size == 0, (readable, counted, reply_size)
        assert 0 < counted <= 2 * reply_size  # at most the rest of one flush of 2 replies
    finally:
        peer.close()
    await wait_until(lambda: running.server.buffers.used == 0)


async def test_limits_reload_applies_to_open_connections(running: Running) -> None:
    c = await AsyncConnection.open(running.path)
    assert await c.call(ECHO, {"text": "x" * 2000}) == {"text": "x" * 2000}
    running.server.limits = ServerLimits(max_message_bytes=1024)
    with pytest.raises(VarlinkErrorReply) as err:
        await c.call(ECHO, {"text": "x" * 2000})
    assert err.value.name == "io.timelined.Timeline.LimitExceeded"
    c.close()


async def test_a_reply_larger_than_a_frame_is_refused_by_name_and_logged_once(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A small call whose reply would pass max_message_bytes (64 KiB here) is answered with
    LimitExceeded naming the reply, not with a frame no client with that limit can read; the
    connection goes on. Before, the 100 KB frame was sent (and held while unread)."""
    c = await AsyncConnection.open(running.path)
    raw = await raw_connect(running.path)
    big = {"text": "x" * 1000, "times": 100}
    for _ in range(2):
        with pytest.raises(VarlinkErrorReply) as err:
            await c.call(ECHO, big)
        assert err.value.name == "io.timelined.Timeline.LimitExceeded"
        params = err.value.parameters
        assert params["limit"] == f"max_message_bytes (reply of {ECHO})"
        assert params["size"] > 100_000 and params["maximum"] == 64 * 1024
    assert await c.call(ECHO, {"text": "y"}) == {"text": "y"}
    c.close()
    # Whatever the client's own limit: the frame on the wire is the small error.
    await raw.send(msgspec.json.encode({"method": ECHO, "parameters": big}) + b"\0")
    (reply,) = await read_frames(raw, 1)
    assert reply["error"] == "io.timelined.Timeline.LimitExceeded"
    await raw.aclose()
    warnings = [r for r in caplog.records if "refused the reply" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]  # once; the others at debug


# --- authorization -----------------------------------------------------------------------------


async def test_refused_peer_gets_permission_denied_and_is_disconnected(tmp_path: Path) -> None:
    seen: list[tuple[PeerCredentials, str, str]] = []

    def authorize(peer: PeerCredentials, interface: str, method: str) -> None:
        seen.append((peer, interface, method))
        if method == "Echo":
            raise PermissionDenied(peer.uid, peer.gid, f"{interface}.{method}", "read-only peer")

    async with serving(tmp_path, authorize=authorize) as r:
        s = await raw_connect(r.path)
        async with s:
            await s.send(
                call("io.timelined.Test.WhoAmI")
                + call(ECHO, {"text": "no"})
                + call("io.timelined.Test.WhoAmI")
            )
            replies = await read_until_closed(s)
        assert "parameters" in replies[0] and "error" not in replies[0]
        assert replies[1]["error"] == "io.timelined.Timeline.PermissionDenied"
        assert replies[1]["parameters"]["reason"] == "read-only peer"
        assert len(replies) == 2
        assert seen[0][0].pid == os.getpid()
        assert seen[1][1:] == ("io.timelined.Test", "Echo")


# --- streams -----------------------------------------------------------------------------------


async def test_streaming_replies(running: Running) -> None:
    s = await raw_connect(running.path)
    async with s:
        await s.send(
            call("io.timelined.Test.Count", {"n": 4}, more=True) + call(ECHO, {"text": "next"})
        )
        replies = await read_frames(s, 5)
    assert replies[:4] == [
        {"parameters": {"i": 0}, "continues": True},
        {"parameters": {"i": 1}, "continues": True},
        {"parameters": {"i": 2}, "continues": True},
        {"parameters": {"i": 3}},
    ]
    assert replies[4] == {"parameters": {"text": "next"}}


async def test_stream_through_the_client(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        got = [r["i"] async for r in await c.call("io.timelined.Test.Count", {"n": 3}, more=True)]
        assert got == [0, 1, 2]
        # Without more, a streaming method answers with its first reply.
        assert await c.call("io.timelined.Test.Count", {"n": 3}) == {"i": 0}
        with pytest.raises(VarlinkErrorReply) as err:
            async for _ in c.stream("io.timelined.Test.Count", {"n": 5, "fail_at": 2}):
                pass
        assert err.value.name == "io.timelined.Timeline.SlowConsumer"
        assert await c.call(ECHO, {"text": "after"}) == {"text": "after"}
    assert running.probe.streams_closed == 3


async def test_a_stream_reply_larger_than_a_frame_is_refused_like_any_other(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream's later reply past max_message_bytes ends the stream with the same error as
    any oversized reply: LimitExceeded naming the method and the reply's size, logged once
    per method. It said "max_message_bytes (reply)", without the method, and logged nothing."""
    count = "io.timelined.Test.Count"
    s = await raw_connect(running.path)
    async with s:
        for _ in range(2):
            await s.send(call(count, {"n": 4, "big_at": 2}, more=True))
            replies = await read_frames(s, 3)
            assert replies[:2] == [
                {"parameters": {"i": 0}, "continues": True},
                {"parameters": {"i": 1}, "continues": True},
            ]
            assert replies[2]["error"] == "io.timelined.Timeline.LimitExceeded"
            params = replies[2]["parameters"]
            assert params["limit"] == f"max_message_bytes (reply of {count})"
            assert params["size"] > BIG_PAD and params["maximum"] == 64 * 1024
        await s.send(call(ECHO, {"text": "next"}))  # the connection goes on
        assert await read_frames(s, 1) == [{"parameters": {"text": "next"}}]
    warnings = [r for r in caplog.records if "refused the reply" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"]  # once; the other at debug
    assert count in warnings[0].getMessage()


async def test_disconnect_mid_stream_is_harmless(running: Running) -> None:
    async def misbehave() -> None:
        s = await raw_connect(running.path)
        await s.send(call("io.timelined.Test.Count", {"n": 1000, "delay_s": 0.5}, more=True))
        await anyio.sleep(0.05)
        await s.aclose()  # while the handler waits for its next item
        await wait_until(lambda: running.probe.streams_closed >= 1)

    await with_bystander(running.path, misbehave)
    assert running.server.stats().streams_open == 0


async def test_abandoned_stream_in_the_client_discards_the_connection(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        async for r in c.stream("io.timelined.Test.Count", {"n": 100, "delay_s": 0.01}):
            if r["i"] == 2:
                break
        assert await c.call(ECHO, {"text": "fresh"}) == {"text": "fresh"}


# --- connection reuse, counters, shutdown ------------------------------------------------------


async def test_client_reuses_its_connection(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        for i in range(20):
            assert await c.call(ECHO, {"text": str(i)}) == {"text": str(i)}
    stats = running.server.stats()
    assert stats.connections_total == 1
    assert stats.calls_total == 20


async def test_client_replaces_a_connection_the_server_closed(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, limits=ServerLimits(idle_timeout_s=0.2)) as r,
        AsyncVarlinkClient(r.path) as c,
    ):
        assert await c.call(ECHO, {"text": "1"}) == {"text": "1"}
        await anyio.sleep(0.7)  # the server closes the pooled connection meanwhile
        assert await c.call(ECHO, {"text": "2"}) == {"text": "2"}
        assert r.server.stats().connections_total == 2


async def test_graceful_shutdown_finishes_calls_in_flight(tmp_path: Path) -> None:
    """Shutdown waits for a call in flight, and no longer: an idle connection is hung up and
    a stream ends at once (ServerStopping), well before the grace period."""
    grace_s = 5.0
    async with serving(tmp_path) as r:
        idle = await raw_connect(r.path)
        busy = await AsyncConnection.open(r.path)
        streaming = await raw_connect(r.path)
        await streaming.send(call("io.timelined.Test.Count", {"n": 100, "delay_s": 1}, more=True))
        results: list[Any] = []

        async def slow_call() -> None:
            results.append(await busy.call("io.timelined.Test.Slow", {"seconds": 1.0}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            # Both calls under way, however slow the host: a fixed sleep (0.1 s) let shutdown
            # start, under load, before the server had read them.
            await wait_until(
                lambda: r.server.stats().streams_open == 1 and r.server.stats().calls_total >= 2,
                limit_s=30,
            )
            assert r.probe.slow_done == 0  # still in flight
            start = time.monotonic()
            with anyio.fail_after(grace_s + 5):
                await r.server.shutdown(grace_s=grace_s)
            took = time.monotonic() - start
        assert results == [{"slept": 1.0}]
        assert took < grace_s - 1, f"shutdown took {took:.1f} s: it waited for the stream"
        assert await read_until_closed(idle) == []
        stream_replies = await read_until_closed(streaming)
        assert stream_replies[-1]["error"] == "io.timelined.Timeline.ShuttingDown"
        with pytest.raises(OSError):
            await anyio.connect_unix(os.fspath(r.path))
        busy.close()
        await idle.aclose()
        await streaming.aclose()


async def test_shutdown_deadline_cuts_stuck_calls(tmp_path: Path) -> None:
    async with serving(tmp_path, grace_s=0.2) as r:
        c = await AsyncConnection.open(r.path)
        async with anyio.create_task_group() as tg:

            async def stuck() -> None:
                with pytest.raises(Exception):  # closed under it: any transport error
                    await c.call("io.timelined.Test.Slow", {"seconds": 30})

            tg.start_soon(stuck)
            await anyio.sleep(0.1)
            with anyio.fail_after(2):
                await r.server.shutdown(grace_s=0.2)
        c.close()


async def test_counters(running: Running) -> None:
    async with AsyncVarlinkClient(running.path) as c:
        await c.call(ECHO, {"text": "a"})
        with pytest.raises(VarlinkErrorReply):
            await c.call("io.timelined.Test.Boom")
        stats = running.server.stats()
    assert stats.calls_total == 2
    assert stats.errors_total == 1
    assert stats.internal_errors_total == 1
    assert stats.connections_open == 1


async def test_peer_that_reads_no_replies_is_dropped(tmp_path: Path) -> None:
    async with serving(tmp_path, limits=ServerLimits(idle_timeout_s=0.3)) as r:

        async def misbehave() -> None:
            s = await raw_connect(r.path)
            big = call(ECHO, {"text": "y" * 50_000, "times": 100})  # a 5 MB reply
            await s.send(big)
            await wait_until(lambda: r.server.stats().connections_open == 1, limit_s=3)
            await s.aclose()

        await with_bystander(r.path, misbehave)


async def test_a_failing_authorization_hook_denies(tmp_path: Path) -> None:
    def authorize(peer: PeerCredentials, interface: str, method: str) -> None:
        raise KeyError("bug in the hook")

    async with serving(tmp_path, authorize=authorize) as r:
        s = await raw_connect(r.path)
        async with s:
            await s.send(call(ECHO, {"text": "x"}) + call(ECHO, {"text": "y"}))
            replies = await read_until_closed(s)
    assert [x["error"] for x in replies] == ["io.timelined.Timeline.InternalError"]


async def test_stream_edge_cases(running: Running) -> None:
    s = await raw_connect(running.path)
    async with s:
        await s.send(
            call("io.timelined.Test.Count", {"n": 2, "forget_final": True}, more=True)
            + call(ECHO, {"text": "plain"}, more=True)  # more on a one-reply method
        )
        replies = await read_frames(s, 4)
    assert replies[:2] == [
        {"parameters": {"i": 0}, "continues": True},
        {"parameters": {"i": 1}, "continues": True},
    ]
    assert (
        replies[2]["error"] == "io.timelined.Timeline.InternalError"
    )  # a stream must end with Final
    assert replies[3] == {"parameters": {"text": "plain"}}
