"""Framing of one log line: encoding, decoding and the hash rule (docs/log-format.md).

A line is `{"seq":N,"ts":"…","type":"…","actor":…,"data":…,"prev":"<64 hex>","hash":"<64 hex>"}`
and a newline, members in exactly that order, no whitespace. Because `prev` and `hash` are the
last two members and have fixed widths, both sit at fixed offsets from the line's end: checking
a line's hash and reading its link needs byte slicing only, never a JSON parse.

The hash is the lowercase hex SHA-256 of the line's bytes up to (not including) `,"hash":`,
followed by the byte `}`.
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import Generic, Literal, TypeVar

import msgspec

from timelined.errors import LocalError
from timelined.events import (
    Actor,
    ActorLike,
    BlockAppended,
    Event,
    Record,
    decode_data,
    encode_data,
)

GENESIS_PREV = "0" * 64
_D = TypeVar("_D")

RecordErrorKind = Literal["framing", "unparsable", "bad field", "hash mismatch", "bad data"]

# Fixed-width tail of every line (newline excluded): ,"prev":"<64>","hash":"<64>"}
_PREFIX = b'{"seq":'
_HASH_TAIL = 75  # len(',"hash":"') + 64 + len('"}'): the bytes not covered by the hash
_LINK_TAIL = 149  # len(',"prev":"') + 64 + len('"') + _HASH_TAIL: every byte after data's value
_MIN_LINE = len(_PREFIX) + 1 + 149  # prefix, one digit, the prev and hash members
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)
_DAEMON_JSON = b'"daemon"'
_actor_encoder = msgspec.json.Encoder()  # Actor's fields in class order: uid, gid, pid
_actor_json: dict[Actor, bytes] = {}  # a few clients write most records: reuse their bytes
# encode_record's last (ts, type, `_head`), (actor, its JSON) and (hash, its bytes): each swapped
# whole, so that a caller on another thread reads a consistent pair.
_last_head: tuple[str | None, str | None, bytes] = (None, None, b"")
_last_actor: tuple[ActorLike | None, bytes] = (None, b"")
_last_hash: tuple[str, bytes] = (GENESIS_PREV, GENESIS_PREV.encode())
_valid_ts = ""


class RecordError(LocalError):
    """A line that is not a valid record; `kind` says which check refused it."""

    name = "RecordError"

    def __init__(self, kind: RecordErrorKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}", kind=kind, detail=detail)
        self.kind: RecordErrorKind = kind
        self.detail = detail


class _Envelope(msgspec.Struct, Generic[_D], frozen=True, forbid_unknown_fields=True):
    """A line's members, the one declaration of them; `data` raw or typed for its event."""

    seq: int
    ts: str
    type: str
    actor: Actor | Literal["daemon"]
    data: _D
    prev: str
    hash: str


_envelope = msgspec.json.Decoder(_Envelope[msgspec.Raw])
# A block.appended line (nearly every line of a log) decoded in one pass by `decode_unhashed`.
_block_envelope = msgspec.json.Decoder(_Envelope[BlockAppended])
_actor_decoder = msgspec.json.Decoder(Actor | Literal["daemon"])
_actors: dict[bytes, Actor | Literal["daemon"]] = {}  # decode_framed's, by the actor's bytes
# The envelope exactly as the writer writes it, up to data's opening brace: decode_framed's
# short way. Small actor ids and plain type names only; every other line takes the long way.
_HEAD = re.compile(
    rb'\{"seq":[1-9][0-9]{0,18},"ts":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}'
    rb'\.[0-9]{6}Z)","type":"([a-z_.]{1,64})","actor":("daemon"|\{"uid":%(id)s,"gid":%(id)s,'
    rb'"pid":%(id)s\}),"data":\{' % {b"id": rb"(?:0|[1-9][0-9]{0,8})"}  # JSON: no leading 0
)
_HEX_DIGITS = b"0123456789abcdef"  # prev is 64 bytes by position: hex if nothing else is left


def encode_record(
    seq: int, ts: str, actor: ActorLike, event: Event, prev: str, data: bytes | None = None
) -> tuple[Record, bytes]:
    """The record and its line (newline included), hashed by the rule above.

    `data`, when given, must be `encode_data(event)` (the writer encodes an event once, for its
    size check and its line).
    """
    global _last_head, _last_actor, _last_hash
    if seq < 1:
        raise ValueError(f"seq must be >= 1, not {seq}")
    # A batch's events share one timestamp, an AppendBlocks' one type and actor too, and each
    # prev is the hash made just before: their bytes (checked once, when made) are reused
    # while they stay the same objects (docs/performance.md).
    type_name = event.type_name
    head = _last_head
    if ts is not head[0] or type_name is not head[1]:
        head = _last_head = (ts, type_name, _head(ts, type_name))
    last_actor = _last_actor
    if actor is last_actor[0]:
        actor_json = last_actor[1]
    else:
        actor_json = _actor_bytes(actor)
        _last_actor = (actor, actor_json)
    last = _last_hash
    if prev is last[0]:
        prev_bytes = last[1]
    elif _HEX64.fullmatch(prev) is None:
        raise ValueError(f"prev {prev!r} is not 64 lowercase hex digits")
    else:
        prev_bytes = prev.encode()
    body = b"".join(
        (
            b'{"seq":%d' % seq,
            head[2],
            actor_json,
            b',"data":',
            encode_data(event) if data is None else data,
            b',"prev":"',
            prev_bytes,
            b'"',
        )
    )
    digest = sha256(body + b"}").hexdigest()
    digest_bytes = digest.encode()
    _last_hash = (digest, digest_bytes)
    record = Record(seq=seq, ts=ts, actor=actor, event=event, prev=prev, hash=digest)
    return record, b"".join((body, b',"hash":"', digest_bytes, b'"}\n'))


def _head(ts: str, type_name: str) -> bytes:
    """`,"ts":"…","type":"…","actor":`: the line's bytes between its seq and its actor.
    The check keeps unescaped text out of the line (skipped for the last timestamp seen: a
    batch of many connections' appends shares it, their actors alternating)."""
    global _valid_ts
    if ts != _valid_ts:
        if _TS.fullmatch(ts) is None:
            raise ValueError(f"timestamp {ts!r} is not in the log's format")
        _valid_ts = ts
    return b',"ts":"%s","type":"%s","actor":' % (ts.encode(), type_name.encode())


def _actor_bytes(actor: ActorLike) -> bytes:
    if isinstance(actor, Actor):
        return _actor_json.get(actor) or _encode_actor(actor)
    if actor == "daemon":
        return _DAEMON_JSON
    raise TypeError(f"actor must be an Actor or 'daemon', not {actor!r}")


def _decode_actor(encoded: bytes) -> Actor | Literal["daemon"]:
    if len(_actors) >= 4096:
        _actors.clear()
    actor = _actors[encoded] = _actor_decoder.decode(encoded)
    return actor


def _encode_actor(actor: Actor) -> bytes:
    if len(_actor_json) >= 4096:
        _actor_json.clear()
    encoded = _actor_json[actor] = _actor_encoder.encode(actor)
    return encoded


def line_hash(content: bytes) -> str:
    """The hash a line (without its newline) must carry: SHA-256 of the covered bytes + `}`."""
    return sha256(content[:-_HASH_TAIL] + b"}").hexdigest()


def check_frame(content: bytes) -> tuple[int, bytes, bytes]:
    """Light check of a line without its newline: framing, seq and the line's own hash.

    Returns (seq, prev, hash) with prev and hash as ASCII bytes; raises RecordError
    ("framing" or "hash mismatch"). The JSON between is not parsed: see `decode_content`.
    """
    if (
        len(content) < _MIN_LINE
        or content[:7] != _PREFIX
        or content[-76:-66] != b'","hash":"'
        or content[-2:] != b'"}'
        or content[-149:-140] != b',"prev":"'
    ):
        raise RecordError("framing", "not a record line (members missing or out of order)")
    digest = content[-66:-2]
    if sha256(content[:-_HASH_TAIL] + b"}").hexdigest().encode() != digest:
        raise RecordError("hash mismatch", "the line's bytes do not hash to its hash member")
    end = content.find(b",", 7)
    digits = content[7:end]
    if not digits.isdigit() or digits[0] == 0x30:  # no sign, spaces, underscores, leading 0
        # "bad field", not "framing": the line hashes correctly, so it was written whole and no
        # crash explains it; the chain walk must report it as damage, never cut it as torn.
        raise RecordError("bad field", "seq is not a positive integer")
    return int(digits), content[-140:-76], digest


def peek_seq(content: bytes) -> int | None:
    """The seq a line claims, read from its prefix without any check of the rest."""
    if content[:7] != _PREFIX:
        return None
    end = content.find(b",", 7, 40)
    digits = content[7:end] if end > 0 else b""
    if not digits.isdigit() or digits[0] == 0x30:
        return None
    return int(digits)


def decode_content(content: bytes) -> Record:
    """Fully check and decode a line given without its newline; raises RecordError."""
    return decode_framed(content, check_frame(content))


def decode_framed(content: bytes, frame: tuple[int, bytes, bytes]) -> Record:
    """The rest of `decode_content` for a line whose `check_frame` result is `frame`."""
    seq, prev, digest = frame
    # Every line a boot or a verification reads comes here. The writer's own lines take a
    # shorter way: their envelope read by one match, in exactly the writer's bytes, and only
    # `data` decoded. It accepts a subset of what the full checks below accept, and builds the
    # same Record; anything else (and every refusal) takes the full checks, which name it.
    head = _HEAD.match(content)
    if head is not None and content[-_LINK_TAIL - 1] == 0x7D and not prev.strip(_HEX_DIGITS):
        try:
            event = decode_data(head[2].decode(), memoryview(content)[head.end() - 1 : -_LINK_TAIL])
            actor = _actors.get(head[3]) or _decode_actor(head[3])
        except (KeyError, msgspec.DecodeError, RecursionError):
            pass  # RecursionError: data nested past the stack; the full checks say what they say
        else:
            return Record(
                seq=seq,
                ts=head[1].decode(),
                actor=actor,
                event=event,
                prev=prev.decode(),
                hash=digest.decode(),
            )
    return _decode_fully(content, frame)


def _decode_fully(content: bytes, frame: tuple[int, bytes, bytes]) -> Record:
    """`decode_framed` by every check in turn: any line, and the error that names its fault."""
    seq, prev, digest = frame
    try:
        env = _envelope.decode(content)
    except msgspec.ValidationError as exc:
        raise RecordError("bad field", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise RecordError("unparsable", str(exc)) from None
    if env.seq != seq or env.prev.encode() != prev or env.hash.encode() != digest:
        raise RecordError("framing", "members repeated or escaped in the fixed positions")
    if _HEX64.fullmatch(env.prev) is None:
        raise RecordError("bad field", "prev is not 64 lowercase hex digits")
    if _TS.fullmatch(env.ts) is None:
        raise RecordError("bad field", f"timestamp {env.ts!r} is not in the log's format")
    # msgspec keeps the last of repeated members and skips whitespace, so a line such as
    # `…,"hash":"<junk>","prev":"…","hash":"…"}` would decode. The writer's bytes are exactly
    # this envelope: demand them, so every member is there once, in order, as written (an
    # auditor's parser and tools/verify_log.py refuse anything else). Compared in place: a
    # prefix, and data's length filling the rest up to prev (a repeat would make it longer).
    if env.actor == "daemon":
        actor_json = _DAEMON_JSON
    else:
        actor_json = _actor_json.get(env.actor) or _encode_actor(env.actor)
    written = b'{"seq":%d,"ts":"%s","type":"%s","actor":%s,"data":' % (
        seq,
        env.ts.encode(),
        env.type.encode(),
        actor_json,
    )
    if not content.startswith(written) or len(written) + len(env.data) != len(content) - _LINK_TAIL:
        raise RecordError("framing", "members repeated, reordered, escaped or spaced")
    try:
        event = decode_data(env.type, env.data)
    except KeyError:
        raise RecordError("bad data", f"unknown event type {env.type!r}") from None
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise RecordError("bad data", f"{env.type}: {exc}") from None
    return Record(seq=seq, ts=env.ts, actor=env.actor, event=event, prev=env.prev, hash=env.hash)


def decode_line(line: bytes) -> Record:
    """Fully check and decode one line, which must end with its newline; raises RecordError."""
    if line[-1:] != b"\n":
        raise RecordError("framing", "the line does not end with a newline")
    content = line[:-1]
    if b"\n" in content:
        raise RecordError("framing", "more than one line")
    return decode_content(content)


def decode_unhashed(content: bytes) -> Record:
    """A line (without its newline) decoded without its hash or its bytes checked; RecordError.

    For a reader whose lines' hashes are verified elsewhere (the verifier's replay: the chain
    check, alongside, hashes every line; a line whose hash verifies is byte for byte what the
    writer wrote, so the exact-bytes checks of `decode_content` add nothing). msgspec still
    validates every member and the data against its event type. A block.appended line is decoded
    in one pass, with the same validation as the two steps (envelope, then data) that every
    other line, or one that does not fit, takes; the two steps name what is wrong.
    """
    env: _Envelope[BlockAppended] | _Envelope[msgspec.Raw] | None
    try:
        env = _block_envelope.decode(content)
    except msgspec.DecodeError:
        env = None
    if env is not None and env.type == BlockAppended.type_name:
        event: Event = env.data
    else:
        try:
            env = _envelope.decode(content)
            event = decode_data(env.type, env.data)
        except KeyError as exc:
            raise RecordError("bad data", f"unknown event type {exc}") from None
        except msgspec.DecodeError as exc:
            raise RecordError("unparsable", str(exc)) from None
    return Record(
        seq=env.seq, ts=env.ts, actor=env.actor, event=event, prev=env.prev, hash=env.hash
    )
