"""`ConnectionCore`, the sans-I/O client connection both shells drive: fed bytes by hand."""

from __future__ import annotations

import msgspec
import pytest

from timelined.varlink.client import ConnectionCore
from timelined.varlink.errors import ConnectionFailed, ProtocolViolation, VarlinkErrorReply


class Reply(msgspec.Struct):
    i: int


def _core(max_reply_bytes: int = 1024) -> ConnectionCore:
    return ConnectionCore("/run/x.sock", max_reply_bytes)


def _take(core: ConnectionCore) -> msgspec.Raw:
    frame = core.next_frame()
    assert frame is not None
    return core.reply(frame)


def test_a_call_and_its_reply_in_pieces() -> None:
    core = _core()
    assert core.call("a.B.C", {"x": 1}) == b'{"method":"a.B.C","parameters":{"x":1}}\0'
    assert core.broken  # a call is under way: nothing else may be sent
    for piece in (b'{"param', b'eters":{"i":', b"7}}"):
        core.feed(piece)
        assert core.next_frame() is None
    core.feed(b"\0")
    assert core.decode(_take(core), Reply) == Reply(7)
    assert core.done and not core.broken


def test_a_stream_ends_with_the_reply_without_continues() -> None:
    core = _core()
    assert core.call("a.B.C", None, more=True) == b'{"method":"a.B.C","more":true}\0'
    core.feed(b'{"parameters":{"i":0},"continues":true}\0{"parameters":{"i":1},"continues":true}\0')
    assert core.as_dict(_take(core)) == {"i": 0}
    assert not core.done
    assert core.as_dict(_take(core)) == {"i": 1}
    assert core.broken  # abandoned here, the rest of the stream would confuse the next call
    core.feed(b'{"parameters":null}\0')
    assert core.as_dict(_take(core)) == {}
    assert core.done and not core.broken


def test_an_error_reply_is_raised_and_the_connection_goes_on() -> None:
    core = _core()
    core.call("a.B.C", {})
    core.feed(b'{"error":"a.B.Nope","parameters":{"message":"no"}}\0')
    with pytest.raises(VarlinkErrorReply, match=r"a\.B\.Nope: no") as err:
        _take(core)
    assert err.value.parameters == {"message": "no"}
    assert not core.broken


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b'{"parameters":{},"continues":true}\0', "continues to a call without more"),
        (b"[1]\0", "not a Varlink message"),
    ],
)
def test_a_bad_reply_breaks_the_connection(frame: bytes, problem: str) -> None:
    core = _core()
    core.call("a.B.C", {})
    core.feed(frame)
    with pytest.raises(ProtocolViolation, match=problem):
        _take(core)
    assert core.broken
    with pytest.raises(ConnectionFailed, match="connection is broken"):
        core.call("a.B.C", {})


def test_a_reply_over_the_limit_comes_after_the_good_ones() -> None:
    core = _core(max_reply_bytes=64)
    core.call("a.B.C", None, more=True)
    core.feed(b'{"parameters":{"i":0},"continues":true}\0' + b"x" * 100)
    assert core.as_dict(_take(core)) == {"i": 0}
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 64"):
        core.next_frame()
    assert core.broken


def test_the_end_of_the_stream_before_the_reply() -> None:
    core = _core()
    core.call("a.B.C", {})
    core.feed(b'{"param')
    with pytest.raises(ConnectionFailed, match="closed before the reply") as err:
        core.feed(b"")
    assert err.value.path == "/run/x.sock"
    assert core.broken


def test_a_oneway_call_awaits_nothing() -> None:
    core = _core()
    assert (
        core.call("a.B.C", {}, oneway=True) == b'{"method":"a.B.C","parameters":{},"oneway":true}\0'
    )
    assert core.done and not core.broken


def test_the_mapper_makes_every_error() -> None:
    core = ConnectionCore("/p", 1024, lambda e: KeyError(e.name))
    with pytest.raises(KeyError, match=r"org\.varlink\.transport\.ConnectionFailed"):
        raise core.lost("gone")
    core = ConnectionCore("/p", 1024, lambda e: KeyError(e.name))
    core.call("a.B.C", {})
    core.feed(b'{"error":"a.B.Nope"}\0')
    with pytest.raises(KeyError, match=r"a\.B\.Nope"):
        _take(core)
