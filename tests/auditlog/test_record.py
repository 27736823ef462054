"""Framing and the hash rule: encode/decode round trips, every refusal kind, the doc's example."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timelined import events as ev
from timelined.auditlog.record import (
    _HEAD,
    GENESIS_PREV,
    RecordError,
    _decode_fully,
    check_frame,
    decode_framed,
    decode_line,
    decode_unhashed,
    encode_record,
    line_hash,
)
from timelined.events import DAEMON, Actor, BlockAppended, BlockData, ContextFocused, Record

from .conftest import TS, actor_for, make_lines, sample_event

DOC = Path(__file__).resolve().parents[2] / "docs" / "log-format.md"


def rehash(body: bytes) -> bytes:
    """A line whose hash member is right for `body` (the bytes before `,"hash":`)."""
    digest = hashlib.sha256(body + b"}").hexdigest().encode()
    return body + b',"hash":"' + digest + b'"}\n'


def body_of(line: bytes) -> bytes:
    return line[: line.rindex(b',"hash":"')]


def test_round_trip_of_every_sample() -> None:
    for record, line in make_lines(40):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert decode_line(line) == record


def test_members_in_order_and_hash_rule_by_hand() -> None:
    prev = GENESIS_PREV
    for seq in range(1, 9):
        record, line = encode_record(seq, TS, actor_for(seq), sample_event(seq), prev)
        obj = json.loads(line)
        assert list(obj) == ["seq", "ts", "type", "actor", "data", "prev", "hash"]
        assert obj["seq"] == seq and obj["prev"] == prev and obj["type"] == record.type
        # The rule: sha256 of the bytes before the LAST `,"hash":` plus `}` (data may hold one).
        cut = line.rfind(b',"hash":')
        assert hashlib.sha256(line[:cut] + b"}").hexdigest() == obj["hash"] == record.hash
        assert line_hash(line[:-1]) == record.hash
        prev = record.hash
    assert b',"hash":"not the member"' in make_lines(3)[1][1]  # the sample's trap is present


def test_actor_forms() -> None:
    _, line = encode_record(1, TS, DAEMON, ContextFocused(context_id="c"), GENESIS_PREV)
    assert b',"actor":"daemon",' in line
    actor = Actor(uid=1000, gid=100, pid=42)
    _, line = encode_record(1, TS, actor, ContextFocused(context_id="c"), GENESIS_PREV)
    assert b',"actor":{"uid":1000,"gid":100,"pid":42},' in line
    assert decode_line(line).actor == actor


@settings(max_examples=150, deadline=None)
@given(
    seq=st.integers(min_value=1, max_value=10**19),
    content=st.text(),
    uid=st.integers(min_value=0, max_value=2**32 - 1),
    daemon=st.booleans(),
    metadata=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8)),
    prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_round_trip_property(
    seq: int, content: str, uid: int, daemon: bool, metadata: dict[str, object], prev: str
) -> None:
    block = BlockData(
        id="blk_x",
        context_id="ctx_x",
        role="user",
        content=content,
        timestamp=TS,
        metadata=metadata,
    )
    actor = DAEMON if daemon else Actor(uid=uid, gid=uid, pid=1)
    record, line = encode_record(seq, TS, actor, BlockAppended(block=block), prev)
    assert line.count(b"\n") == 1
    assert decode_line(line) == record
    assert json.loads(line)["data"]["block"]["content"] == content


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda line: line[:-1], "framing"),  # no newline
        (lambda line: line + line, "framing"),  # two lines
        (lambda line: line.replace(b'"type":"context', b'"type":"kontext'), "hash mismatch"),
        (lambda line: b" " + line, "framing"),
        (lambda line: line.replace(b'"hash":"', b'"hash": "'), "framing"),
        (lambda line: rehash(body_of(line).replace(b'"ts":', b'"ts";')), "unparsable"),
        (lambda line: rehash(body_of(line).replace(b'"context.focused"', b'"x.y"')), "bad data"),
        (lambda line: rehash(body_of(line).replace(b'"context_id"', b'"ctx"')), "bad data"),
        (lambda line: rehash(body_of(line).replace(TS.encode(), b"2026-11-22 03:38")), "bad field"),
        (lambda line: rehash(body_of(line).replace(b'"daemon"', b'"root"')), "bad field"),
        (lambda line: rehash(body_of(line).replace(b'{"seq":7', b'{"seq":07')), "bad field"),
        (lambda line: rehash(body_of(line).replace(b'"prev":"0', b'"prev":"A')), "bad field"),
        # Decoders keep the last of repeated members; the line must hold each exactly once.
        (
            lambda line: rehash(
                body_of(line).replace(b',"prev":', b',"hash":"%s","prev":' % (b"a" * 64))
            ),
            "framing",
        ),
        (
            lambda line: rehash(
                body_of(line).replace(b',"prev":', b',"data":{"context_id":"x"},"prev":')
            ),
            "framing",
        ),
        (lambda line: rehash(body_of(line).replace(b'"ts":', b'"type":"x","ts":')), "framing"),
        (lambda line: rehash(body_of(line).replace(b'"ts":"', b'"ts": "')), "framing"),
        (lambda line: rehash(body_of(line).replace(b'"data":{', b'"data": {')), "framing"),
        (lambda line: rehash(body_of(line).replace(b',"prev":', b' ,"prev":')), "framing"),
        (lambda line: rehash(body_of(line).replace(b'"daemon"', b'"daem\\u006fn"')), "framing"),
        (
            lambda line: rehash(
                body_of(line).replace(b'"type":"context.', b'"type":"context\\u002e')
            ),
            "framing",
        ),
    ],
)
def test_refusals_name_their_kind(mutate: object, kind: str) -> None:
    _, line = encode_record(7, TS, DAEMON, ContextFocused(context_id="ctx_1"), GENESIS_PREV)
    assert callable(mutate)
    with pytest.raises(RecordError) as caught:
        decode_line(mutate(line))
    assert caught.value.kind == kind


def test_encode_refuses_what_would_break_the_line() -> None:
    event = ContextFocused(context_id="c")
    with pytest.raises(ValueError, match="timestamp"):
        encode_record(1, '2026-11-22T03:38:00"Z', DAEMON, event, GENESIS_PREV)
    with pytest.raises(ValueError, match="prev"):
        encode_record(1, TS, DAEMON, event, "A" * 64)
    with pytest.raises(ValueError, match="seq"):
        encode_record(0, TS, DAEMON, event, GENESIS_PREV)


def _line_by_hand(seq: int, ts: str, actor: ev.ActorLike, event: ev.Event, prev: str) -> bytes:
    """docs/log-format.md's line, built from nothing that encode_record keeps."""
    who: object = (
        actor
        if not isinstance(actor, Actor)
        else {"uid": actor.uid, "gid": actor.gid, "pid": actor.pid}
    )
    actor_json = json.dumps(who, separators=(",", ":"))
    body = b'{"seq":%d,"ts":"%s","type":"%s","actor":%s,"data":%s,"prev":"%s"' % (
        seq,
        ts.encode(),
        event.type_name.encode(),
        actor_json.encode(),
        ev.encode_data(event),
        prev.encode(),
    )
    return rehash(body)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["2026-11-22T03:38:00.123456Z", "2026-11-22T03:38:00.123457Z"]),
            st.booleans(),  # the same timestamp object, or an equal new one
            st.integers(0, 3),  # the daemon, or one of three actors (two of them equal)
            st.integers(0, 3),  # the event
            st.booleans(),  # prev: the hash made just before, or another
            st.booleans(),  # a refused call first (a timestamp that is not the log's)
        ),
        min_size=1,
        max_size=30,
    )
)
def test_every_line_is_the_rule_s_whatever_was_encoded_before(
    calls: list[tuple[str, bool, int, int, bool, bool]],
) -> None:
    """encode_record reuses the bytes of the last timestamp, type, actor and hash while they
    are the same objects: each line must still be the one built from scratch, whichever
    objects came before (equal or not, refused calls in between)."""
    actors: list[ev.ActorLike] = [
        DAEMON,
        Actor(uid=1000, gid=1000, pid=1),
        Actor(uid=1000, gid=1000, pid=1),
        Actor(uid=0, gid=0, pid=2),
    ]
    kept: dict[str, str] = {}
    prev = GENESIS_PREV
    for seq, (ts, same_ts, actor, kind, chained, refused) in enumerate(calls, start=1):
        if refused:
            with pytest.raises(ValueError, match="timestamp"):
                encode_record(seq, ts[:-1] + "+", DAEMON, sample_event(kind), prev)
        stamp = kept.setdefault(ts, ts) if same_ts else "".join(list(ts))
        event = sample_event(kind)
        link = prev if chained else hashlib.sha256(b"%d" % seq).hexdigest()
        record, line = encode_record(seq, stamp, actors[actor], event, link)
        assert line == _line_by_hand(seq, stamp, actors[actor], event, link)
        assert decode_line(line) == record
        prev = record.hash


def doc_example() -> tuple[bytes, str]:
    """The worked example of docs/log-format.md, computed by the code."""
    event = ContextFocused(context_id="ctx_01jd2k3m4n5p6q7r8s9t0v1w2x")
    record, line = encode_record(
        1, "2026-11-22T03:38:00.123456Z", Actor(uid=1000, gid=1000, pid=4242), event, GENESIS_PREV
    )
    return line, record.hash


def test_docs_worked_example_is_what_the_code_writes() -> None:
    line, digest = doc_example()
    text = DOC.read_text(encoding="utf-8")
    covered = body_of(line) + b"}"
    assert line.decode().rstrip("\n") in text
    assert covered.decode() in text
    assert digest in text


# One of 40 written lines, edited at `at` (`cut` bytes out, `insert` in), then hashed again.
_edits = settings(max_examples=400, deadline=None)(
    given(
        which=st.integers(min_value=0, max_value=39),
        at=st.integers(min_value=0, max_value=10_000),
        cut=st.integers(min_value=0, max_value=3),
        insert=st.binary(max_size=4) | st.sampled_from([b" ", b",", b'"', b"{", b"}", b"\\u0041"]),
    )
)


def _edited(which: int, at: int, cut: int, insert: bytes) -> tuple[bytes, bytes]:
    """The edited line's content (no newline), and the original's."""
    _, line = make_lines(40)[which]
    body = body_of(line)
    at %= len(body)
    return rehash(body[:at] + insert + body[at + cut :])[:-1], line[:-1]


def _outcome(decode: Callable[[bytes, tuple[int, bytes, bytes]], object], content: bytes) -> object:
    try:
        frame = check_frame(content)
    except RecordError as exc:
        return ("check_frame", exc.kind)
    try:
        return decode(content, frame)
    except RecordError as exc:
        return exc.kind


@_edits
def test_the_short_way_decodes_exactly_as_the_full_checks(
    which: int, at: int, cut: int, insert: bytes
) -> None:
    """decode_framed's short way for the writer's own lines accepts only what the full checks
    accept, builds the same Record, and leaves every refusal to them (so the same kind)."""
    content, original = _edited(which, at, cut, insert)
    assert _outcome(decode_framed, content) == _outcome(_decode_fully, content)
    assert _HEAD.match(original) is not None  # the writer's lines do take the short way
    assert _outcome(decode_framed, original) == _outcome(_decode_fully, original) != "framing"


@_edits
def test_the_unhashed_way_accepts_every_line_the_full_checks_accept(
    which: int, at: int, cut: int, insert: bytes
) -> None:
    """decode_unhashed (the verifier's replay, whose hashes the chain check verifies) builds the
    same Record as the full checks for every line they accept, and refuses only with a kind the
    full checks use for a line whose JSON or data is wrong."""
    content, original = _edited(which, at, cut, insert)
    full = _outcome(_decode_fully, content)
    try:
        unhashed: object = decode_unhashed(content)
    except RecordError as exc:
        unhashed = exc.kind
        assert exc.kind in ("unparsable", "bad data")
        assert not isinstance(full, Record)  # a line the full checks accept is never refused
    else:
        if isinstance(full, Record):
            assert unhashed == full
    assert decode_unhashed(original) == _decode_fully(original, check_frame(original))
