"""AppendBlocks through a real daemon: one call, one atomic group of blocks, idempotent by ids.

Checked from the outside only (the client, the independent `varlink` package, the files): what
a refused call leaves (nothing: the same blocks, the same log, a state equal to its replay),
what a retry returns, where the blocks land, and the limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import varlink

from tests.daemon.harness import DaemonProcess, serving
from tests.helpers import dump_state, replay_dump
from timelined.api import Timeline
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

MAX_BLOCK = 2048
MAX_MESSAGE = 256 * 1024


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
    assert [b.content for b in stored] == [f"part {i}" for i in range(5)]
    assert [b.position for b in stored] == [2, 3, 4, 5, 6]
    assert [b.seq for b in stored] == list(range(stored[0].seq, stored[0].seq + 5))
    assert all(b.id.startswith("blk_") for b in stored) and len({b.id for b in stored}) == 5
    listed = client.list_blocks(ctx).blocks
    assert listed[1:] == stored
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
    assert again == first
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
    assert done[:2] == survived
    assert [b.id for b in done] == [b["id"] for b in turn]
    assert [b.position for b in done] == [1, 2, 3, 4]
    assert client.append_blocks(ctx, turn) == done  # and now a plain retry


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
    assert [(b.id, b.role) for b in reply.blocks] == [("typed-0", "user"), ("typed-1", "assistant")]
    assert client.invoke(Timeline.AppendBlocks, params).blocks[0] == reply.blocks[0]


def test_the_independent_varlink_package(daemon: DaemonProcess, client: Client) -> None:
    ctx = client.create_conversation("via python-varlink").root_context_id
    address = f"unix:{daemon.socket_path}"
    with varlink.Client(address=address) as vc, vc.open("io.timelined.Timeline") as tl:
        reply = tl.AppendBlocks(context_id=ctx, blocks=_turn("pv"))
        assert [b["id"] for b in reply["blocks"]] == ["pv-0", "pv-1", "pv-2"]
        assert tl.AppendBlocks(context_id=ctx, blocks=_turn("pv")) == reply
        with pytest.raises(varlink.VarlinkError) as err:
            tl.AppendBlocks(context_id=ctx, blocks=[{"role": "u", "content": ""}, *_turn("pv")])
        assert err.value.error() == "io.timelined.Timeline.BlockIdConflict"
    assert [b.id for b in client.list_blocks(ctx).blocks] == ["pv-0", "pv-1", "pv-2"]
