"""AppendBlocks through a real daemon: one call, one atomic group of blocks, idempotent by ids.

Checked from the outside only (the client, the independent `varlink` package, the files): what
a refused call leaves (nothing: the same blocks, the same log, a state equal to its replay),
what a retry returns, where the blocks land, and the limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import varlink

from tests.daemon.harness import DaemonProcess, serving
from tests.daemon.memory_abuse import connect, read_frames
from tests.helpers import dump_state, replay_dump
from timelined.api import Timeline
from timelined.api.timeline import (
    APPENDED_BLOCK_BYTES,
    AppendedBlock,
    append_blocks_reply_bound,
)
from timelined.client import Client, InvalidParameter
from timelined.commands import MAX_BLOCKS_PER_CALL, AppendBlocks, NewBlock
from timelined.config import Config, load_config
from timelined.errors import (
    BlockIdConflict,
    ContextNotFound,
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
)
from timelined.replies import json_size

MAX_BLOCK = 2048
MAX_MESSAGE = 256 * 1024
TL_APPEND_BLOCKS = "io.timelined.Timeline.AppendBlocks"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    limits = {"max_block_bytes": MAX_BLOCK, "max_message_bytes": MAX_MESSAGE}
    with serving(limits=limits) as proc:
        yield proc


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(daemon.socket_path, timeout=30) as c:
        yield c


@pytest.fixture
def config(daemon: DaemonProcess) -> Config:
    return load_config(daemon.config_path)


def _turn(prefix: str | None, n: int = 3) -> list[dict[str, Any]]:
    roles = ["user", "tool", "assistant"]
    return [
        {
            "role": roles[i % 3],
            "content": f"part {i}",
            **({"id": f"{prefix}-{i}"} if prefix else {}),
        }
        for i in range(n)
    ]


def _log_bytes(config: Config) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(config.log_dir.glob("*.jsonl")))


def _assert_nothing_written(
    client: Client, config: Config, ctx: str, blocks_before: int, log_before: bytes
) -> None:
    assert len(client.list_blocks(ctx).blocks) == blocks_before
    assert _log_bytes(config) == log_before
    assert dump_state(config.state_db) == replay_dump(
        config.log_dir, config.state_dir.parent / "replay.db"
    )


def test_blocks_land_in_order_at_consecutive_positions_and_seqs(client: Client) -> None:
    ctx = client.create_conversation("a turn").root_context_id
    client.append_block(ctx, "system", "before")
    stored = client.append_blocks(ctx, _turn(None, 5))
    assert [b.position for b in stored] == [2, 3, 4, 5, 6]
    assert [b.seq for b in stored] == list(range(stored[0].seq, stored[0].seq + 5))
    assert all(b.id.startswith("blk_") for b in stored) and len({b.id for b in stored}) == 5
    assert not any(b.existed for b in stored)
    listed = client.list_blocks(ctx).blocks[1:]
    assert [(b.id, b.seq, b.position) for b in listed] == [
        (b.id, b.seq, b.position) for b in stored
    ]
    assert [b.content for b in listed] == [f"part {i}" for i in range(5)]
    # One BlockAppended per block: the log needs no new event type.
    events = client.read_log(after_seq=stored[0].seq - 1).events
    assert [e.type for e in map(_event, events)] == ["block.appended"] * 5


def _event(raw: Any) -> Any:
    from timelined.client import log_event

    return log_event(raw)


def test_one_bad_block_stores_none(client: Client, config: Config) -> None:
    ctx = client.create_conversation("all or nothing").root_context_id
    client.append_block(ctx, "user", "kept")
    log_before = _log_bytes(config)
    too_big = {"role": "user", "content": "x" * (MAX_BLOCK + 1)}
    with pytest.raises(LimitExceeded) as exc:
        client.append_blocks(ctx, [*_turn(None), too_big])
    assert exc.value.params["limit"] == "max_block_bytes"
    _assert_nothing_written(client, config, ctx, 1, log_before)

    bad_time = {"role": "user", "content": "when?", "timestamp": "yesterday"}
    with pytest.raises(InvalidArgument) as bad:
        client.append_blocks(ctx, [*_turn(None), bad_time])
    assert bad.value.params["parameter"] == "blocks[3].timestamp"
    _assert_nothing_written(client, config, ctx, 1, log_before)

    with pytest.raises(InvalidParameter) as invalid:  # refused before the writer: a bad role
        client.append_blocks(ctx, [*_turn(None), {"role": "no spaces", "content": "x"}])
    assert invalid.value.params["parameter"] == "blocks[3].role"
    _assert_nothing_written(client, config, ctx, 1, log_before)

    with pytest.raises(ContextNotFound):
        client.append_blocks("ctx_nope", _turn(None))
    paused = client.create_conversation("archived").root_context_id
    client.archive_context(paused)
    with pytest.raises(InvalidTransition):
        client.append_blocks(paused, _turn(None))
    assert client.list_blocks(paused).blocks == []


def test_a_retry_returns_the_stored_blocks_and_logs_nothing(client: Client, config: Config) -> None:
    ctx = client.create_conversation("retry").root_context_id
    first = client.append_blocks(ctx, _turn("retry"))
    log_before = _log_bytes(config)
    again = client.append_blocks(ctx, _turn("retry"))
    assert [(b.id, b.seq, b.position) for b in again] == [(b.id, b.seq, b.position) for b in first]
    assert not any(b.existed for b in first) and all(b.existed for b in again)
    _assert_nothing_written(client, config, ctx, 3, log_before)


def test_a_mix_of_stored_and_new_ids_or_other_content_is_a_conflict(
    client: Client, config: Config
) -> None:
    ctx = client.create_conversation("conflicts").root_context_id
    client.append_blocks(ctx, _turn("mix"))
    client.append_block(ctx, "user", "after the turn")  # the turn is no longer the tail
    elsewhere = client.create_conversation("elsewhere").root_context_id
    log_before = _log_bytes(config)
    extended = [*_turn("mix"), {"role": "user", "content": "new", "id": "mix-new"}]
    with pytest.raises(BlockIdConflict) as exc:
        client.append_blocks(ctx, extended)
    assert exc.value.params["id"] == "mix-0"
    other = _turn("mix")
    other[1]["content"] = "changed"
    with pytest.raises(BlockIdConflict) as changed:
        client.append_blocks(ctx, other)
    assert changed.value.params["id"] == "mix-1"
    new_then_stored = [{"role": "user", "content": "new", "id": "mix-new"}, *_turn("mix")]
    with pytest.raises(BlockIdConflict):
        client.append_blocks(ctx, new_then_stored)
    with pytest.raises(BlockIdConflict) as moved:
        client.append_blocks(elsewhere, _turn("mix"))
    assert moved.value.params["context_id"] == ctx
    with pytest.raises(InvalidArgument) as repeated:
        client.append_blocks(
            ctx, [*_turn("dup", 2), {"role": "user", "content": "x", "id": "dup-0"}]
        )
    assert repeated.value.params["parameter"] == "blocks[2].id"
    _assert_nothing_written(client, config, ctx, 4, log_before)
    assert client.list_blocks(elsewhere).blocks == []


def test_a_call_a_crash_cut_short_is_completed_by_its_retry(client: Client) -> None:
    """A power cut can keep a prefix of a batch's lines (the log cuts only a torn line): the
    call's first blocks, at the context's tail, at consecutive seqs. Its retry appends the rest."""
    ctx = client.create_conversation("cut short").root_context_id
    turn = _turn("cut", 4)
    survived = client.append_blocks(ctx, turn[:2])  # what the log kept of the first try
    done = client.append_blocks(ctx, turn)
    assert [(b.id, b.seq, b.existed) for b in done[:2]] == [(b.id, b.seq, True) for b in survived]
    assert [b.id for b in done] == [b["id"] for b in turn]
    assert [b.position for b in done] == [1, 2, 3, 4]
    assert [b.existed for b in done] == [True, True, False, False]
    again = client.append_blocks(ctx, turn)  # and now a plain retry
    assert [(b.id, b.seq, b.position) for b in again] == [(b.id, b.seq, b.position) for b in done]
    assert all(b.existed for b in again)


def test_limits_on_the_count_and_the_size_of_a_call(client: Client, config: Config) -> None:
    ctx = client.create_conversation("limits").root_context_id
    log_before = _log_bytes(config)
    with pytest.raises(InvalidParameter) as many:
        client.append_blocks(ctx, [{"role": "user", "content": ""}] * (MAX_BLOCKS_PER_CALL + 1))
    assert many.value.params["parameter"] == "blocks"
    with pytest.raises(InvalidParameter):
        client.append_blocks(ctx, [])
    # Every block within max_block_bytes, the whole call past max_message_bytes.
    big = [{"role": "user", "content": "y" * (MAX_BLOCK // 2)} for _ in range(300)]
    with pytest.raises(LimitExceeded) as whole:
        client.append_blocks(ctx, big)
    assert whole.value.params["limit"] == "max_message_bytes"
    _assert_nothing_written(client, config, ctx, 0, log_before)
    stored = client.append_blocks(ctx, [{"role": "user", "content": ""}] * MAX_BLOCKS_PER_CALL)
    assert [b.position for b in stored] == list(range(1, MAX_BLOCKS_PER_CALL + 1))


def test_typed_through_the_generic_entry(client: Client) -> None:
    ctx = client.create_conversation("typed").root_context_id
    blocks = [NewBlock("user", "q", id="typed-0"), NewBlock("assistant", "a", id="typed-1")]
    params = AppendBlocks(ctx, blocks)
    reply = client.invoke(Timeline.AppendBlocks, params)
    assert isinstance(reply.blocks[0], AppendedBlock)
    assert [(b.id, b.position) for b in reply.blocks] == [("typed-0", 1), ("typed-1", 2)]
    again = client.invoke(Timeline.AppendBlocks, params).blocks[0]
    assert (again.id, again.seq, again.existed) == (reply.blocks[0].id, reply.blocks[0].seq, True)


def test_the_independent_varlink_package(daemon: DaemonProcess, client: Client) -> None:
    ctx = client.create_conversation("via python-varlink").root_context_id
    address = f"unix:{daemon.socket_path}"
    with varlink.Client(address=address) as vc, vc.open("io.timelined.Timeline") as tl:
        reply = tl.AppendBlocks(context_id=ctx, blocks=_turn("pv"))
        assert [b["id"] for b in reply["blocks"]] == ["pv-0", "pv-1", "pv-2"]
        assert [sorted(b) for b in reply["blocks"]] == [["existed", "id", "position", "seq"]] * 3
        again = tl.AppendBlocks(context_id=ctx, blocks=_turn("pv"))
        assert again["blocks"] == [{**b, "existed": True} for b in reply["blocks"]]
        with pytest.raises(varlink.VarlinkError) as err:
            tl.AppendBlocks(context_id=ctx, blocks=[{"role": "u", "content": ""}, *_turn("pv")])
        assert err.value.error() == "io.timelined.Timeline.BlockIdConflict"
    assert [b.id for b in client.list_blocks(ctx).blocks] == ["pv-0", "pv-1", "pv-2"]


# --- the reply: never the content, never past limits.max_message_bytes ------------------------


def _frame(ctx: str, blocks: list[dict[str, Any]]) -> bytes:
    call = {"method": TL_APPEND_BLOCKS, "parameters": {"context_id": ctx, "blocks": blocks}}
    return msgspec.json.encode(call)


def _raw_call(daemon: DaemonProcess, frame: bytes) -> bytes:
    """One call on a socket of its own; the reply frame as sent (the NUL cut off)."""
    with connect(daemon.socket_path) as sock:
        sock.settimeout(30)
        sock.sendall(frame + b"\0")
        return read_frames(sock)[0]


def _padded(ctx: str, blocks: list[dict[str, Any]], size: int) -> bytes:
    """The call with its blocks' content grown so that its frame is exactly `size` bytes."""
    room = size - len(_frame(ctx, blocks))
    assert room >= 0
    for i, b in enumerate(blocks):
        b["content"] = "z" * (room // len(blocks) + (i < room % len(blocks)))
    frame = _frame(ctx, blocks)
    assert len(frame) == size
    return frame


def test_an_appended_block_is_at_most_its_bound_on_the_wire() -> None:
    widest = AppendedBlock("x", -(2**63), -(2**63), existed=False)
    assert len(msgspec.json.encode(widest)) + 1 == APPENDED_BLOCK_BYTES + json_size("x")


def test_the_reply_of_a_call_at_the_limit_fits_one_frame(
    daemon: DaemonProcess, client: Client
) -> None:
    """Finding (issue 17): the reply echoed every block, so 1,000 empty blocks (a 26 KB call)
    got a 268,876-byte reply against a 256 KiB limit. Now: id, seq, position, existed."""
    ctx = client.create_conversation("reply at the limit").root_context_id
    empty = _raw_call(daemon, _frame(ctx, [{"role": "user", "content": ""}] * MAX_BLOCKS_PER_CALL))
    assert len(empty) <= MAX_MESSAGE
    blocks = msgspec.json.decode(empty)["parameters"]["blocks"]
    assert [b["position"] for b in blocks] == list(range(1, MAX_BLOCKS_PER_CALL + 1))

    # The call as large as a frame may be: 1,000 blocks with the longest ids.
    ids = [f"{i:04d}" + "i" * 124 for i in range(MAX_BLOCKS_PER_CALL)]
    call = [{"role": "user", "content": "", "id": id} for id in ids]
    frame = _padded(ctx, call, MAX_MESSAGE)
    bound = append_blocks_reply_bound(json_size(id) for id in ids)
    assert bound <= MAX_MESSAGE
    for existed in (False, True):  # the first call, then its retry
        reply = _raw_call(daemon, frame)
        assert len(reply) <= bound
        got = msgspec.json.decode(reply)["parameters"]["blocks"]
        assert [b["id"] for b in got] == ids
        assert [b["position"] for b in got] == list(range(1001, 2001))
        assert {b["existed"] for b in got} == {existed}
        assert b"zzz" not in reply  # no content
    assert client.get_block(ids[-1]).content == call[-1]["content"]


def test_a_call_whose_reply_could_pass_the_limit_is_refused_before_writing(
    client: Client, config: Config
) -> None:
    """Ids are echoed: 340 blocks with ids of control characters (6 bytes each in JSON) make a
    call that fits a frame and a reply that might not. Refused whole, nothing written: after
    the write, an error could only lie about a committed call."""
    ctx = client.create_conversation("reply too big").root_context_id
    ids = ["\x01" * 120 + f"{i:08d}" for i in range(340)]
    call = [{"role": "u", "content": "", "id": id} for id in ids]
    assert len(_frame(ctx, call)) <= MAX_MESSAGE
    log_before = _log_bytes(config)
    with pytest.raises(LimitExceeded) as exc:
        client.append_blocks(ctx, call)
    assert exc.value.params["limit"] == "limits.max_message_bytes (reply)"
    assert exc.value.params["size"] == append_blocks_reply_bound(json_size(id) for id in ids)
    assert exc.value.params["maximum"] == MAX_MESSAGE
    _assert_nothing_written(client, config, ctx, 0, log_before)
    assert len(client.append_blocks(ctx, call[:300])) == 300  # fewer blocks a call: fine
