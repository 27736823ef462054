"""NUL framing: partial frames, pipelining, the size limit, and what a bad frame decodes to."""

from __future__ import annotations

import itertools
import socket

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timelined.varlink.framing import (
    FrameReader,
    FrameSplitter,
    FrameTooLarge,
    IncompleteFrame,
    MalformedMessage,
    decode_call,
)


def test_partial_frames_across_reads() -> None:
    s = FrameSplitter(1024)
    assert s.feed(b'{"method":') == []
    assert s.feed(b'"a.b.C"') == []
    assert s.feed(b"}\0{") == [b'{"method":"a.b.C"}']
    assert s.buffered == 1
    assert s.feed(b"}\0") == [b"{}"]
    assert s.buffered == 0


def test_many_frames_in_one_read() -> None:
    s = FrameSplitter(1024)
    frames = [f'{{"n":{i}}}'.encode() for i in range(100)]
    assert s.feed(b"\0".join(frames) + b"\0") == frames


# No deadline (Hypothesis's default is 200 ms an example): a loaded machine can pause one
# example that long, and the rerun's "Unreliable test timings" fails the test.
@settings(deadline=None)
@given(
    frames=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"x")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_any_split_gives_the_same_frames(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(f + b"\0" for f in frames)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    s = FrameSplitter(1024)
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out.extend(s.feed(data[a:b]))
    assert out == frames
    assert s.buffered == 0


def test_oversized_frame_is_detected_without_buffering_the_rest() -> None:
    limit = 4096
    s = FrameSplitter(limit)
    chunk = b"x" * 1000
    fed = 0
    with pytest.raises(FrameTooLarge) as info:
        for _ in range(10_000):  # 10 MB if it were all kept
            s.feed(chunk)
            fed += len(chunk)
    assert fed <= limit  # it stopped at the first chunk past the limit
    assert info.value.maximum == limit
    assert limit < info.value.size <= limit + len(chunk)


def test_frames_before_an_oversized_one_are_kept() -> None:
    s = FrameSplitter(1024)
    with pytest.raises(FrameTooLarge) as info:
        s.feed(b"{}\0[]\0" + b"y" * 5000)
    assert info.value.frames == [b"{}", b"[]"]


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    s = FrameSplitter(10)
    assert s.feed(b"x" * 10 + b"\0") == [b"x" * 10]
    with pytest.raises(FrameTooLarge):
        s.feed(b"y" * 11 + b"\0")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"garbage", "malformed JSON"),
        (b"", "malformed JSON"),
        (b'{"method":"a.b.C"', "malformed JSON"),  # what a NUL inside the JSON leaves
        (b'{"method":"a.b.\xff"}', "malformed JSON"),  # invalid UTF-8
        (b"[1]", "not a Varlink call"),
        (b'"x"', "not a Varlink call"),
        (b"{}", "not a Varlink call"),
        (b'{"method":1}', "not a Varlink call"),
        (b'{"method":"a.b.C","more":"yes"}', "not a Varlink call"),
    ],
)
def test_bad_frames_are_named_errors(frame: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_call(frame)
    assert info.value.reason.startswith(reason)


def test_a_nul_inside_json_splits_into_clean_errors() -> None:
    s = FrameSplitter(1024)
    frames = s.feed(b'{"method":"a.b.C","parameters":{"t":"x\0y"}}\0')
    assert len(frames) == 2
    for frame in frames:
        with pytest.raises(MalformedMessage):
            decode_call(frame)


def test_a_call_decodes_with_defaults() -> None:
    call = decode_call(b'{"method":"a.b.C","oneway":true,"upgrade":false,"future":1}')
    assert call.method == "a.b.C"
    assert bytes(call.parameters) == b"{}"
    assert (call.more, call.oneway) == (False, True)


def test_null_flags_mean_false() -> None:
    """The protocol declares `more: ?bool, oneway: ?bool`: null is a valid value."""
    call = decode_call(b'{"method":"a.b.C","parameters":null,"more":null,"oneway":null}')
    assert not call.more and not call.oneway


async def test_reader_on_a_socket_pair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    async with await anyio.abc.UNIXSocketStream.from_socket(b) as stream:
        reader = FrameReader(stream, 1024)
        a.sendall(b"{}\0{")
        assert await reader.receive_frames() == [b"{}"]
        a.sendall(b"}\0[]\0")
        assert await reader.receive_frames() == [b"{}", b"[]"]
        a.sendall(b"{")
        a.close()
        with pytest.raises(IncompleteFrame):
            await reader.receive_frames()


async def test_reader_reports_eof_and_oversize() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    async with await anyio.abc.UNIXSocketStream.from_socket(b) as stream:
        reader = FrameReader(stream, 1024)
        a.sendall(b"{}\0" + b"z" * 2000)
        assert await reader.receive_frames() == [b"{}"]
        with pytest.raises(FrameTooLarge):
            await reader.receive_frames()
    a.close()
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    async with await anyio.abc.UNIXSocketStream.from_socket(d) as stream:
        reader = FrameReader(stream, 1024)
        c.close()
        with pytest.raises(anyio.EndOfStream):
            await reader.receive_frames()
