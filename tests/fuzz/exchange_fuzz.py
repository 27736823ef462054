"""Fuzzing ImportConversation with real exports, broken or forged.

An export of a conversation of the fuzzed daemon (ExportConversation with `more`, its parts
joined into the document ImportConversation takes) is changed by a drawn mutation and imported:

- broken: events dropped, swapped, duplicated, a byte flipped, header or block fields replaced
  by random JSON; the import must refuse it with a named error (or, for a change that keeps
  the document consistent, import it);
- forged: a block's data changed *and its hash recomputed* (the document is self-consistent,
  as anyone can make one): values a direct AppendBlock refuses (a token count past SQLite's
  integers, metadata nested too deeply, a role outside its pattern, content past
  max_block_bytes) must be refused here too, with a named error;
- untouched: imported as new, it must succeed; imported with `keep` (its ids exist) refused.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.campaign import (
    MAX_BLOCK_BYTES,
    MAX_MESSAGE_BYTES,
    FuzzTarget,
    _check_alive,
    _fuzz_settings,
    _seeded,
)
from tests.fuzz.strategies import IdRef, json_values
from tests.fuzz.wire import Violation, check_exchange, check_reply, connect, exchange
from timelined import events as ev
from timelined.auditlog.record import decode_content, encode_record
from timelined.commands import MAX_NESTING
from timelined.varlink.protocol import encode_call

T = "io.timelined.Timeline."
IMPORT = T + "ImportConversation"


@dataclass(frozen=True)
class Mutation:
    op: str
    a: int = 0
    b: int = 0
    value: Any = None


# Values a direct write refuses, by the field of a block they go into.
FORGED = {
    "tokens_input": [2**63, 2**64, -1],
    "tokens_output": [2**63, 10**30],
    "metadata": ["deep"],
    "role": ["a b", "", "x" * 65],
    "content": ["huge"],
    "timestamp": ["", "not a time"],
    "time_taken": [-1.0],
}
REFUSED_DIRECTLY = set(FORGED)

_DETECTABLE = ("conversation.created", "context.spawned", "context.merged", "block.appended")

mutations = st.one_of(
    st.just(Mutation("none")),
    st.just(Mutation("keep")),
    st.builds(Mutation, st.just("drop_event"), st.integers(0, 1000)),
    st.builds(Mutation, st.just("swap_events"), st.integers(0, 1000), st.integers(0, 1000)),
    st.builds(Mutation, st.just("dup_event"), st.integers(0, 1000)),
    st.builds(
        Mutation,
        st.just("flip_byte"),
        st.integers(0, 1000),
        st.integers(0, 10_000),
        st.integers(0, 255),
    ),
    st.builds(
        Mutation,
        st.just("header_field"),
        st.integers(0, 1000),
        st.just(0),
        json_values,
    ),
    st.builds(Mutation, st.just("drop_block"), st.integers(0, 1000)),
    st.builds(
        Mutation, st.just("block_field"), st.integers(0, 1000), st.integers(0, 1000), json_values
    ),
    st.sampled_from(sorted(FORGED)).flatmap(
        lambda field: st.builds(
            Mutation,
            st.just("forge"),
            st.integers(0, 1000),
            st.just(0),
            st.tuples(st.just(field), st.sampled_from(FORGED[field])),
        )
    ),
)


def export_document(target: FuzzTarget, conversation: str) -> dict[str, Any] | None:
    """ExportConversation with `more`, the parts joined; None if the export was refused."""
    parts = read_stream(
        target, encode_call(T + "ExportConversation", {"id": conversation}, more=True)
    )
    if not parts or "error" in parts[-1]:
        return None
    doc: dict[str, Any] = {"events": [], "blocks": []}
    for part in parts:
        p = part["parameters"]
        if p.get("header") is not None:
            doc["header"] = p["header"]
        doc["events"] += p.get("events") or []
        doc["blocks"] += p.get("blocks") or []
    return doc if "header" in doc else None


def read_stream(target: FuzzTarget, call: bytes) -> list[dict[str, Any]]:
    """The replies to one `more` call, up to the last (no half-close: the daemon takes a
    hang-up during a stream as the client going away, and ends the stream)."""
    s = connect(target.socket_path, timeout=30)
    try:
        s.sendall(call)
        buf = b""
        replies: list[dict[str, Any]] = []
        while True:
            while b"\0" not in buf:
                chunk = s.recv(1 << 20)
                if not chunk:
                    return replies
                buf += chunk
            frame, buf = buf.split(b"\0", 1)
            replies.append(json.loads(frame))
            if not replies[-1].get("continues"):
                return replies
    finally:
        s.close()


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"x": value}


def forge(doc: dict[str, Any], index: int, field: str, value: Any) -> bool:
    """Change one appended block's `field`, recompute that event's hash, and change the
    document's copy of the block to match. False when the export has no block."""
    appended = []
    for i, line in enumerate(doc["events"]):
        if '"type":"block.appended"' in line:
            appended.append(i)
    if not appended:
        return False
    i = appended[index % len(appended)]
    record = decode_content(doc["events"][i].encode())
    event = record.event
    assert isinstance(event, ev.BlockAppended)
    if value == "deep":
        value = _deep(MAX_NESTING + 2)
    elif value == "huge":
        value = "h" * (MAX_BLOCK_BYTES + 1)
    block = msgspec.structs.replace(event.block, **{field: value})
    forged = msgspec.structs.replace(event, block=block)
    _, line = encode_record(record.seq, record.ts, record.actor, forged, record.prev)
    doc["events"][i] = line[:-1].decode()
    for b in doc["blocks"]:
        if b["id"] == block.id:
            b[field] = value
    return True


def mutate(doc: dict[str, Any], m: Mutation) -> tuple[dict[str, Any], str, str]:
    """(the document, the import mode, what must happen: "ok", "refused" or "either")."""
    doc = copy.deepcopy(doc)
    events, blocks = doc["events"], doc["blocks"]
    if m.op == "none":
        return doc, "new", "ok"
    if m.op == "keep":
        return doc, "keep", "refused"  # the ids exist here: it was exported from here
    if m.op == "drop_event" and events:
        dropped = events.pop(m.a % len(events))
        # Events the replay cannot do without; others (a focus change, tags or a name set
        # again later) may leave no trace in what the document claims.
        detectable = any(f'"type":"{t}"' in dropped for t in _DETECTABLE)
        return doc, "new", "refused" if detectable else "either"
    if m.op == "swap_events" and len(events) > 1:
        i, j = m.a % len(events), m.b % len(events)
        events[i], events[j] = events[j], events[i]
        return doc, "new", "either" if i == j else "refused"
    if m.op == "dup_event" and events:
        i = m.a % len(events)
        events.insert(i, events[i])
        return doc, "new", "refused"
    if m.op == "flip_byte" and events:
        i = m.a % len(events)
        line = events[i].encode()
        pos = m.b % len(line)
        changed = line[:pos] + bytes([m.value]) + line[pos + 1 :]
        events[i] = changed.decode("utf-8", "replace")
        return doc, "new", "either" if changed == line else "refused"
    if m.op == "header_field":
        keys = sorted(doc["header"])
        doc["header"][keys[m.a % len(keys)]] = m.value
        return doc, "new", "either"
    if m.op == "drop_block" and blocks:
        del blocks[m.a % len(blocks)]
        return doc, "new", "refused"
    if m.op == "block_field" and blocks:
        block = blocks[m.a % len(blocks)]
        keys = sorted(block)
        block[keys[m.b % len(keys)]] = m.value
        return doc, "new", "either"
    if m.op == "forge":
        field, value = m.value
        if forge(doc, m.a, field, value):
            return doc, "new", "refused" if field in REFUSED_DIRECTLY else "either"
    return doc, "new", "ok"


def import_and_check(target: FuzzTarget, conversation: str, m: Mutation) -> None:
    doc = export_document(target, conversation)
    if doc is None:
        return
    doc, mode, want = mutate(doc, m)
    frame = msgspec.json.encode({"method": IMPORT, "parameters": {"document": doc, "mode": mode}})
    payload = frame + b"\0"
    target.stats.trials += 1
    target.stats.frames += 1
    target.stats.bytes += len(payload)
    result = exchange(target.socket_path, [payload])
    _check_alive(target, f"importing a document mutated by {m}")
    try:
        check_exchange(payload, result, MAX_MESSAGE_BYTES)
        if len(payload) - 1 > MAX_MESSAGE_BYTES:
            return
        name, params = check_reply(result.frames[0], IMPORT)
        if want == "ok" and name is not None:
            raise Violation("import refused", f"{m}: {name} {params}")
        if want == "refused" and name is None:
            raise Violation("import accepted", f"{m} was imported: {str(params)[:300]}")
    except Violation as exc:
        target.stats.fail(exc.kind, str(exc))
        raise


def run_exchange(target: FuzzTarget, examples: int, seed: int | None = None) -> None:
    """Export a conversation of the pool, mutate the document, import it; check the answer."""

    @_seeded(seed)
    @_fuzz_settings(examples, seed)
    @given(st.integers(0, 1000), mutations)
    def campaign(which: int, m: Mutation) -> None:
        conversation = target.pool.resolve(IdRef("conversation", which))
        import_and_check(target, conversation, m)

    campaign()
