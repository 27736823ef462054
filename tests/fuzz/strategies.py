"""Hypothesis strategies for Varlink frames, drawn from the daemon's real interfaces.

Calls are built from the parameter Structs of `timelined.api` (through
`msgspec.inspect`), so every method and every parameter the daemon declares is exercised,
mostly with valid values (to get past validation into the engine) and sometimes with values
just outside their constraints or of the wrong type. Ids are placeholders (`IdRef`) resolved
when the frame is rendered, against a pool of ids that really exist in the daemon (and that
grows with the ids its replies mention), so near-valid calls reach real state transitions.

A payload is a list of frames joined by NULs (the last one possibly unterminated), cut into
writes at arbitrary points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

from tests.fuzz.wire import INTERFACES

# --- ids ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdRef:
    """An id of the pool, resolved at render time: `kind` is conversation, context or block."""

    kind: str
    index: int


@dataclass
class IdPool:
    """Ids that exist in the daemon; `exclude` are ids the fuzzer must never learn (the
    canary's), `cap` bounds each list (the newest are kept, the seeds always)."""

    conversations: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    exclude: set[str] = field(default_factory=set)
    seeds: int = 0
    cap: int = 300

    def resolve(self, ref: IdRef) -> str:
        items = {
            "conversation": self.conversations,
            "context": self.contexts,
            "block": self.blocks,
        }.get(ref.kind) or self.contexts
        if not items:
            return "nothing-yet"
        return items[ref.index % len(items)]

    def learn(self, value: Any) -> None:
        """Collect the ids a reply mentions."""
        if isinstance(value, dict):
            if value.get("id") in self.exclude or value.get("context_id") in self.exclude:
                return
            for key, item in value.items():
                if isinstance(item, str) and (key == "id" or key.endswith("_id")):
                    self._add(item)
                elif isinstance(item, dict | list):
                    self.learn(item)
        elif isinstance(value, list):
            for item in value:
                self.learn(item)

    def _add(self, item: str) -> None:
        if item in self.exclude:
            return
        target = (
            self.conversations
            if item.startswith("conv_")
            else self.contexts
            if item.startswith("ctx_")
            else self.blocks
            if item.startswith("blk_")
            else None
        )
        if target is None or item in target:
            return
        target.append(item)
        if len(target) > self.cap:
            del target[self.seeds]


def _id_kind(method: str, field_name: str) -> str:
    if field_name in ("conversation_id",):
        return "conversation"
    if field_name != "id":
        return "context"
    if "Conversation" in method:
        return "conversation"
    if method.endswith(("Block",)):
        return "block"
    return "context"


# --- JSON values --------------------------------------------------------------------------------

# Hypothesis text never contains lone surrogates, so json.dumps always makes valid UTF-8.
texts = st.text(max_size=20) | st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\u2028", "é", "日本語", "🦜" * 3, "\\", '"', "\ufeff", "\uffff"]
)
big_ints = st.sampled_from(
    [-(2**63) - 1, -(2**63), -1, 0, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 10**400]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | big_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

# ISO 8601 and things that look like it: years at the edges, offsets that move past them.
_offsets = st.sampled_from(["", "Z", "z", "+00:00", "-23:59", "+23:59", "+14:00", "-01:00"])
timestamps = (
    st.builds(
        lambda y, rest, off: f"{y:04d}-{rest}{off}",
        st.sampled_from([1, 2, 999, 1000, 1970, 2026, 9999]),
        st.sampled_from(
            ["01-01T00:00:00", "12-31T23:59:59", "06-15T12:00:00.123456", "02-29T00:00:00", "01-01"]
        ),
        _offsets,
    )
    | st.datetimes().map(lambda d: d.isoformat())
    | st.sampled_from(["", "now", "2026-13-01", "9999-99-99", "T", "2026-01-01T25:00:00"])
    | texts
)


# --- values for a declared type -----------------------------------------------------------------

_TIME_FIELDS = {"timestamp", "since", "until"}


def _str_valid(t: mi.StrType, name: str, method: str) -> st.SearchStrategy[Any]:
    lo = t.min_length or 0
    hi = t.max_length if t.max_length is not None else 40
    if name in _TIME_FIELDS:
        return timestamps
    if t.pattern is not None:
        return st.from_regex(t.pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
    text = st.text(min_size=lo, max_size=min(hi, 40))
    if name == "id" or name.endswith("_id"):
        refs = st.builds(IdRef, st.just(_id_kind(method, name)), st.integers(0, 1000))
        return st.one_of(refs, refs, refs, text)
    return text


def valid(t: Any, name: str = "", method: str = "") -> st.SearchStrategy[Any]:
    """Values that satisfy the declared type (ids mostly from the pool)."""
    if isinstance(t, mi.Metadata):
        return valid(t.type, name, method)
    if isinstance(t, mi.StrType):
        return _str_valid(t, name, method)
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**63))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**63 - 1)
        small = st.integers(max(lo, -5), min(hi, max(lo, -5) + 50))
        return st.one_of(small, st.integers(lo, hi), st.sampled_from([lo, hi]))
    if isinstance(t, mi.FloatType):
        lo = t.ge if t.ge is not None else t.gt
        return st.floats(min_value=lo, allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.UnionType):
        return st.one_of([valid(x, name, method) for x in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(valid(t.item_type, name, method), max_size=4)
    if isinstance(t, mi.DictType):
        return st.dictionaries(texts, json_values, max_size=4)
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.StructType):
        return struct_params(t, method)
    return json_values  # AnyType and whatever else


def invalid(t: Any, name: str = "", method: str = "") -> st.SearchStrategy[Any]:
    """Values just outside the declared type: boundaries, wrong types, huge numbers."""
    if isinstance(t, mi.Metadata):
        return invalid(t.type, name, method)
    wrong = json_values
    if isinstance(t, mi.UnionType):
        return st.one_of([invalid(x, name, method) for x in t.types if not _is_none(x)] or [wrong])
    if isinstance(t, mi.IntType):
        edges = [v for v in (t.ge, t.gt, t.le, t.lt) if v is not None]
        near = [e + d for e in edges for d in (-1, 1)]
        return st.one_of(st.sampled_from([*near, 2**63, 2**64, -(2**63) - 1, 1.5, "1"]), wrong)
    if isinstance(t, mi.StrType):
        out: list[Any] = []
        if t.min_length:
            out.append("")
        if t.max_length is not None:
            out += ["x" * (t.max_length + 1), "é" * (t.max_length + 1)]
        if t.pattern is not None:
            out += ["a b", "ü", "a\x00", "a/b"]
        return st.one_of(st.sampled_from(out or [1]), wrong)
    if isinstance(t, mi.FloatType):
        return st.one_of(st.sampled_from([-1.0, -0.0, 1e308, -1e308, "1.0", 10**400]), wrong)
    return wrong


def _is_none(t: Any) -> bool:
    return isinstance(t, mi.NoneType)


@st.composite
def struct_params(draw: st.DrawFn, info: mi.StructType, method: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for f in info.fields:
        roll = draw(st.integers(0, 99))
        if f.required and roll < 3:
            continue  # a required parameter left out
        if not f.required and roll < 45:
            continue
        bad = draw(st.integers(0, 99)) < 12
        gen = (
            invalid(f.type, f.encode_name, method) if bad else valid(f.type, f.encode_name, method)
        )
        params[f.encode_name] = draw(gen)
    if draw(st.integers(0, 99)) < 4:
        params[draw(texts)] = draw(json_values)  # an unknown parameter
    return params


# --- calls --------------------------------------------------------------------------------------

METHOD_LIST: list[tuple[str, Any]] = [
    (f"{i.name}.{m.name}", m) for i in INTERFACES.values() for m in i.methods
]


def _mutate_name(name: str, how: int) -> str:
    interface, _, method = name.rpartition(".")
    return [
        name,
        f"{interface}.{method.lower()}",
        f"{interface}.{method}X",
        f"{interface}x.{method}",
        method,
        f"{name}.",
        "",
        ".",
        f"{interface}.",
        f"org.varlink.service.{method}",
        name + "\x00",
        name.upper(),
    ][how % 12]


@dataclass(frozen=True)
class Render:
    """json.dumps options: the server must not care how the JSON is spelled."""

    ensure_ascii: bool = False
    spaced: bool = False


@dataclass(frozen=True)
class Call:
    obj: dict[str, Any]
    render: Render = Render()


@dataclass(frozen=True)
class Raw:
    data: bytes


@dataclass(frozen=True)
class Deep:
    """A call whose parameters hold `depth` nested arrays or objects at `where`."""

    method: str
    where: str  # "frame", "parameters", "metadata", "param"
    depth: int
    opener: str = "["


@dataclass(frozen=True)
class Huge:
    """AppendBlock (or another call) with one string parameter of `size` characters."""

    method: str
    param: str
    size: int
    char: str
    context: IdRef


@dataclass(frozen=True)
class Mutated:
    """A rendered frame with bytes changed at `at` (a fraction of its length)."""

    base: Call
    op: str  # "nul", "cut", "byte", "dup"
    at: float
    byte: int = 0


FrameSpec = Call | Raw | Deep | Huge | Mutated


@st.composite
def calls(draw: st.DrawFn) -> Call:
    name, m = draw(st.sampled_from(METHOD_LIST))
    info = mi.type_info(m.parameters)
    assert isinstance(info, mi.StructType)
    obj: dict[str, Any] = {}
    roll = draw(st.integers(0, 99))
    if roll < 8:
        obj["method"] = _mutate_name(name, draw(st.integers(0, 11)))
    elif roll < 10:
        obj["method"] = draw(texts)
    else:
        obj["method"] = name
    roll = draw(st.integers(0, 99))
    if roll < 85:
        obj["parameters"] = draw(struct_params(info, name))
    elif roll < 90:
        pass  # no parameters at all
    elif roll < 93:
        obj["parameters"] = None
    else:
        obj["parameters"] = draw(json_values)
    if draw(st.integers(0, 99)) < 8:
        obj["oneway"] = True
    if draw(st.integers(0, 99)) < 8:
        obj["more"] = True
    roll = draw(st.integers(0, 99))
    if roll < 3:
        obj[draw(st.sampled_from(["oneway", "more"]))] = draw(json_values)
    elif roll < 6:
        obj[draw(st.sampled_from(["upgrade", "id", "", "parameters2"]))] = draw(json_values)
    if draw(st.integers(0, 99)) < 10:
        # key order must not matter
        obj = dict(reversed(list(obj.items())))
    render = Render(ensure_ascii=draw(st.booleans()), spaced=draw(st.booleans()))
    return Call(obj, render)


def valid_calls() -> st.SearchStrategy[Call]:
    """Calls that are well-formed frames (the parameters may still be wrong)."""
    return calls()


raw_frames = st.builds(
    Raw,
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"",
                b"{}",
                b"[]",
                b"null",
                b'"x"',
                b"1",
                b'{"method":null}',
                b'{"method":"io.timelined.Admin.GetStatus","oneway":"yes"}',
                b'{"method":"io.timelined.Admin.GetStatus",}',
                b'{"method":"io.timelined.Admin.GetStatus"',
                b'{"method":"io.timelined.Admin.GetStatus"}}',
                b'\xef\xbb\xbf{"method":"io.timelined.Admin.GetStatus"}',
                b'{"method":"io.timelined.Admin.GetStatus\xff"}',
                b'{"method":"io.timelined.Admin.GetStatus","parameters":NaN}',
                b'{"method":"io.timelined.Admin.GetStatus","parameters":{"a":"\\ud800"}}',
                b'{"method":"\\u0000"}',
                b" \t\r\n" + b'{"method":"io.timelined.Admin.GetStatus"}' + b" \n",
            ]
        ),
        json_values.map(lambda v: json.dumps(v).encode()),
    ),
)

deep_frames = st.builds(
    Deep,
    st.sampled_from(
        [
            "io.timelined.Timeline.AppendBlock",
            "io.timelined.Timeline.CreateConversation",
            "io.timelined.Admin.GetStatus",
            "io.timelined.Timeline.UpdateConversation",
        ]
    ),
    st.sampled_from(["frame", "parameters", "metadata", "param"]),
    st.sampled_from([64, 120, 200, 256, 400, 700, 1000, 2000, 10_000, 200_000]),
    st.sampled_from(["[", '{"a":']),
)


_HUGE_PARAM = {
    "io.timelined.Timeline.AppendBlock": "content",
    "io.timelined.Timeline.CreateConversation": "name",
    "io.timelined.Timeline.SearchBlocks": "query",
    "io.timelined.Timeline.MergeContext": "summary",
    "io.timelined.Admin.GetStatus": "x",
}


def huge_frames(max_message_bytes: int, max_block_bytes: int) -> st.SearchStrategy[Huge]:
    sizes = [
        max_block_bytes - 64,
        max_block_bytes,
        max_block_bytes + 1,
        max_message_bytes - 300,
        max_message_bytes - 120,
        max_message_bytes + 1,
        2 * max_message_bytes,
    ]
    return st.sampled_from(sorted(_HUGE_PARAM)).flatmap(
        lambda method: st.builds(
            Huge,
            st.just(method),
            st.just(_HUGE_PARAM[method]),
            st.sampled_from(sizes),
            st.sampled_from(["x", "é", "🦜", "\x00", '"']),
            st.builds(IdRef, st.just("context"), st.integers(0, 1000)),
        )
    )


mutated_frames = st.builds(
    Mutated,
    calls(),
    st.sampled_from(["nul", "cut", "byte", "dup"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 255),
)


def frames(max_message_bytes: int, max_block_bytes: int) -> st.SearchStrategy[FrameSpec]:
    """Any frame: mostly near-valid calls, then garbage, deep nesting, huge, mutated."""
    return st.one_of(
        calls(),
        calls(),
        calls(),
        calls(),
        raw_frames,
        mutated_frames,
        deep_frames,
        huge_frames(max_message_bytes, max_block_bytes),
    )


@dataclass(frozen=True)
class Payload:
    frames: list[FrameSpec]
    terminated: bool  # whether the last frame gets its NUL
    cuts: list[float]  # where the bytes are split into writes (fractions of the length)
    pause: bool  # a short pause between writes, so the daemon sees them apart


@st.composite
def payloads(
    draw: st.DrawFn, max_message_bytes: int, max_block_bytes: int, max_frames: int = 12
) -> Payload:
    spec = frames(max_message_bytes, max_block_bytes)
    roll = draw(st.integers(0, 99))
    if roll < 70:
        items = draw(st.lists(spec, min_size=1, max_size=3))
    elif roll < 90:
        items = draw(st.lists(calls(), min_size=4, max_size=max_frames))  # a pipelined burst
    else:
        items = draw(st.lists(spec, min_size=4, max_size=max_frames))
    terminated = draw(st.integers(0, 99)) >= 8
    cuts = draw(st.lists(st.floats(0, 1, exclude_max=True), max_size=6))
    pause = bool(cuts) and draw(st.integers(0, 99)) < 20
    return Payload(items, terminated, cuts, pause)


# --- rendering ----------------------------------------------------------------------------------


def _dumps(obj: Any, pool: IdPool, render: Render = Render()) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, IdRef):
            return pool.resolve(value)
        raise TypeError(type(value).__name__)

    return json.dumps(
        obj,
        default=default,
        ensure_ascii=render.ensure_ascii,
        separators=(", ", ": ") if render.spaced else (",", ":"),
    ).encode("utf-8")


def render_frame(spec: FrameSpec, pool: IdPool) -> bytes:
    """The bytes of one frame, NUL not included (a frame may contain NULs: it then splits)."""
    if isinstance(spec, Call):
        return _dumps(spec.obj, pool, spec.render)
    if isinstance(spec, Raw):
        return spec.data
    if isinstance(spec, Deep):
        nest = spec.opener * spec.depth + "1" + ("]" if spec.opener == "[" else "}") * spec.depth
        ctx = json.dumps(pool.resolve(IdRef("context", 0)))
        if spec.where == "frame":
            return f'{{"method":"{spec.method}","x":{nest}}}'.encode()
        if spec.where == "parameters":
            return f'{{"method":"{spec.method}","parameters":{nest}}}'.encode()
        if spec.where == "metadata":
            conv = json.dumps(pool.resolve(IdRef("conversation", 0)))
            fields = {
                "io.timelined.Timeline.AppendBlock": (
                    f'"context_id":{ctx},"role":"user","content":"d"'
                ),
                "io.timelined.Timeline.CreateConversation": '"name":"deep"',
                "io.timelined.Timeline.UpdateConversation": f'"id":{conv}',
            }.get(spec.method, '"unknown":1')
            return (
                f'{{"method":"{spec.method}","parameters":{{{fields},"metadata":{{"x":{nest}}}}}}}'
            ).encode()
        return f'{{"method":"{spec.method}","parameters":{{"context_id":{nest}}}}}'.encode()
    if isinstance(spec, Huge):
        params: dict[str, Any] = {spec.param: spec.char * spec.size}
        if spec.method.endswith("AppendBlock"):
            params.setdefault("context_id", spec.context)
            params.setdefault("role", "user")
            params.setdefault("content", "c")
        elif spec.method.endswith("MergeContext"):
            params["id"] = spec.context
        return _dumps({"method": spec.method, "parameters": params}, pool)
    base = _dumps(spec.base.obj, pool, spec.base.render)
    at = int(spec.at * len(base))
    if spec.op == "nul":
        return base[:at] + b"\0" + base[at:]
    if spec.op == "cut":
        return base[:at]
    if spec.op == "byte":
        return base[:at] + bytes([spec.byte]) + base[at + 1 :]
    return base[:at] + base[at:] + base[at:]


def render(payload: Payload, pool: IdPool) -> tuple[bytes, list[bytes]]:
    """(the whole payload, the writes it is sent in)."""
    from tests.fuzz.wire import split_at

    data = b"\0".join(render_frame(f, pool) for f in payload.frames)
    if payload.terminated:
        data += b"\0"
    cuts = [int(c * len(data)) for c in payload.cuts]
    return data, split_at(data, cuts)
