"""The frame parser without a socket: FrameSplitter, decode_call and the parameter decoders.

Whatever bytes arrive, in whatever pieces, the parser yields the same frames, holds no more
than the limit, and turns every frame into a call or a MalformedMessage; every method's
parameter decoder turns any call's parameters into its Struct or one of the errors the server
answers with a name. (Hypothesis here; tests/fuzz/atheris_frames.py is the same target for
atheris, run briefly by the last test when atheris is installed.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import cast

import msgspec
import pytest
from anyio.abc import ByteReceiveStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import IdPool, calls, json_values, raw_frames, render_frame
from tests.fuzz.wire import METHODS, classify
from timelined.varlink.budget import ByteBudget
from timelined.varlink.framing import (
    FrameReader,
    FrameSplitter,
    FrameTooLarge,
    MalformedMessage,
    decode_call,
)

FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
POOL = IdPool(["conv_x"], ["ctx_x"], ["blk_x"])
DECODERS = {name: msgspec.json.Decoder(m.parameters) for name, m in METHODS.items()}
# What the server turns into a named error (InvalidParameter, ProtocolError); anything else
# escaping a decoder would be an InternalError or a dropped connection.
NAMED = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)

frames = st.one_of(
    calls().map(lambda c: render_frame(c, POOL)),
    raw_frames.map(lambda r: r.data),
    st.integers(1, 3000).map(lambda n: b'{"method":"a.B","parameters":' + b"[" * n + b"]" * n),
    st.binary(max_size=300),
)


@FAST
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_any_split_yields_the_same_frames_and_never_too_much(
    parts: list[bytes], cuts: list[int], terminated: bool
) -> None:
    data = b"\0".join(parts) + (b"\0" if terminated else b"")
    limit = 2048
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    splitter = FrameSplitter(limit)
    got: list[bytes] = []
    last = 0
    too_large = None
    for p in points:
        try:
            got += splitter.feed(data[last:p])
        except FrameTooLarge as exc:
            got += exc.frames
            too_large = exc
            break
        assert splitter.buffered <= limit
        last = p
    whole = data.split(b"\0")
    tail = whole.pop()
    if too_large is None:
        assert got == whole and splitter.buffered == len(tail)
        assert all(len(f) <= limit for f in whole) and len(tail) <= limit
    else:
        # the frames before the first oversized one, none after it
        first_big = next(i for i, f in enumerate([*whole, tail]) if len(f) > limit)
        assert got == whole[:first_big]


@FAST
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_the_readers_one_step_split_takes_what_feed_then_take_frames_takes(
    parts: list[bytes], cuts: list[int], terminated: bool
) -> None:
    """`FrameReader.split` (the server's read callback: a read of whole frames split at once)
    leaves the reader as `feed` then `take_frames` do, whatever the reads and the limit."""
    data = b"\0".join(parts) + (b"\0" if terminated else b"")
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    limit = 2048
    one, two = (
        FrameReader(cast(ByteReceiveStream, None), limit, budget=ByteBudget(4096)) for _ in range(2)
    )
    last = 0
    for p in points:
        chunk = data[last:p]
        last = p
        if not chunk:
            continue
        two.feed(chunk)
        assert one.split(chunk) == two.take_frames()
        assert (one.pending_bytes, one.failed) == (two.pending_bytes, two.failed)


@FAST
@given(frames)
def test_decode_call_answers_a_call_or_a_named_refusal(frame: bytes) -> None:
    try:
        call = decode_call(frame)
    except MalformedMessage:
        return
    assert isinstance(call.method, str)
    kind, method = classify(frame, 1 << 30)
    if kind in ("call", "oneway", "stream"):
        assert call.method == method


@FAST
@given(st.sampled_from(sorted(DECODERS)), st.one_of(json_values, calls().map(lambda c: c.obj)))
def test_every_parameter_decoder_fails_only_with_named_errors(method: str, value: object) -> None:
    raw = render_frame_value(value)
    try:
        DECODERS[method].decode(raw)
    except NAMED:
        pass


def render_frame_value(value: object) -> bytes:
    from tests.fuzz.strategies import _dumps

    return _dumps(value, POOL)


ATHERIS = Path(__file__).with_name("atheris_frames.py")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_target_runs_clean() -> None:
    """A short libFuzzer run of the same target (atheris is optional: pip install atheris)."""
    done = subprocess.run(
        [sys.executable, str(ATHERIS), "-runs=5000", "-max_len=4096", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
