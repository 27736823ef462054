"""Slot accounting alone (varlink/admission.py): the order of the checks and the counters."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.varlink import demo
from timelined.errors import PermissionDenied
from timelined.varlink.admission import Admission, Slots
from timelined.varlink.client import AsyncConnection, connect_stream
from timelined.varlink.errors import ConnectionFailed, VarlinkErrorReply, keep_error
from timelined.varlink.pipeline import PipelinedConnection
from timelined.varlink.protocol import encode_call, parse_reply
from timelined.varlink.server import PeerCredentials, ServerLimits

ECHO = "io.timelined.Test.Echo"
WRITER = Admission("full", privileged=True)
READER = Admission("read_only")
LIMITS = {"max_connections": 6, "reserved": 2, "per_uid": 3}


def take(slots: Slots, uid: int, admission: Admission) -> str | None:
    refusal = slots.take(uid, admission, **LIMITS)
    return None if refusal is None else refusal.reason


def test_readers_stop_short_of_the_reserve_and_writers_take_it() -> None:
    slots = Slots()
    assert [take(slots, uid, READER) for uid in (1, 2, 3, 4, 5)] == [None] * 4 + ["reserved"]
    refusal = slots.take(5, READER, **LIMITS)
    assert refusal is not None
    assert (refusal.error.limit, refusal.error.size, refusal.error.maximum) == (
        "max_connections",
        5,
        4,
    )
    assert [take(slots, 0, WRITER) for _ in range(3)] == [None, None, "max_connections"]
    assert slots.by_tier == {"read_only": 4, "full": 2}
    assert slots.refused == {"reserved": 2, "max_connections": 1}


@pytest.mark.parametrize("admission", [WRITER, READER])
def test_no_uid_beyond_its_share_whatever_its_class(admission: Admission) -> None:
    slots = Slots()
    assert [take(slots, 7, admission) for _ in range(4)] == [None] * 3 + ["max_connections_per_uid"]
    assert take(slots, 8, admission) is None  # another uid is not held back


def test_release_gives_the_slot_back_and_forgets_empty_keys() -> None:
    slots = Slots()
    for _ in range(3):
        take(slots, 7, READER)
    assert take(slots, 7, READER) == "max_connections_per_uid"
    slots.release(7, "read_only")
    assert take(slots, 7, READER) is None
    for _ in range(3):
        slots.release(7, "read_only")
    assert (slots.open, dict(slots.by_uid), dict(slots.by_tier)) == (0, {}, {})


def test_no_per_uid_bound_and_no_reserve_when_zero() -> None:
    slots = Slots()
    got = [slots.take(1, READER, max_connections=3, reserved=0, per_uid=0) for _ in range(4)]
    assert [r.reason if r else None for r in got] == [None, None, None, "max_connections"]


# --- the server's admission hook, in process -----------------------------------------------------


def _refuse_everyone(peer: PeerCredentials) -> Admission:
    raise PermissionDenied(peer.uid, peer.gid, "(any method)", "nobody may")


def _broken_hook(peer: PeerCredentials) -> Admission:
    raise ValueError("a bug in the hook")


async def test_a_refused_peer_reads_the_error_and_is_closed_without_a_slot(
    tmp_path: Path,
) -> None:
    async with demo.serving(tmp_path, limits=ServerLimits(max_connections=1)) as r:
        r.server.admit = _refuse_everyone
        for _ in range(5):  # more than max_connections: none of them held a slot
            s = await demo.raw_connect(r.path)
            async with s:
                frames = await demo.read_until_closed(s, 2)  # sent nothing: refused all the same
            assert [f["error"] for f in frames] == ["io.timelined.Timeline.PermissionDenied"]
        # The client reads the refusal even when its call met the closed socket first.
        c = await AsyncConnection.open(r.path)
        await demo.wait_until(lambda: r.server.stats().rejected_by_reason["admission"] == 6)
        await anyio.sleep(0.05)
        with pytest.raises(VarlinkErrorReply) as err:
            await c.call(ECHO, {"text": "late"})
        c.close()
        assert err.value.name == "io.timelined.Timeline.PermissionDenied"
        stats = r.server.stats()
        assert (stats.connections_total, stats.connections_rejected) == (0, 6)


async def test_the_pipelined_client_reads_the_refusal_its_send_met_closed(
    tmp_path: Path,
) -> None:
    """The shared connection of AsyncVarlinkClient: a call sent after the server refused the
    peer and closed meets EPIPE, yet raises the refusal the server sent, not a hang-up."""
    async with demo.serving(tmp_path) as r:
        r.server.admit = _refuse_everyone
        stream = await connect_stream(str(r.path), keep_error)
        await demo.wait_until(lambda: r.server.stats().rejected_by_reason.get("admission") == 1)
        await anyio.sleep(0.05)  # the server has closed its end: the send meets EPIPE
        pipe = PipelinedConnection(stream, str(r.path), 1 << 20, keep_error)
        reply = await pipe.call(encode_call(ECHO, {"text": "late"}))
        assert reply is not None
        error = parse_reply(reply)[2]
        assert error is not None and error.name == "io.timelined.Timeline.PermissionDenied"
        assert pipe.broken  # the next call opens a new connection
        with pytest.raises(ConnectionFailed):
            await pipe.call(encode_call(ECHO, {"text": "again"}))
        pipe.close()


async def test_a_failing_hook_denies(tmp_path: Path) -> None:
    async with demo.serving(tmp_path) as r:
        r.server.admit = _broken_hook
        s = await demo.raw_connect(r.path)
        async with s:
            frames = await demo.read_until_closed(s, 2)
        assert [f["error"] for f in frames] == ["io.timelined.Timeline.InternalError"]
        assert r.server.stats().connections_total == 0


async def test_a_silent_connection_gets_the_shorter_idle_timeout(tmp_path: Path) -> None:
    limits = ServerLimits(idle_timeout_s=5, idle_timeout_new_s=0.3)
    async with demo.serving(tmp_path, limits=limits) as r:
        active = await demo.raw_connect(r.path)
        silent = await demo.raw_connect(r.path)
        async with active, silent:
            await active.send(encode_call(ECHO, {"text": "hi"}))
            assert await demo.read_frames(active, 1) == [{"parameters": {"text": "hi"}}]
            with anyio.fail_after(2):
                assert await demo.read_until_closed(silent) == []
            await active.send(encode_call(ECHO, {"text": "still here"}))
            assert await demo.read_frames(active, 1) == [{"parameters": {"text": "still here"}}]
