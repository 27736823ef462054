"""A batch's block rows inserted together (state.apply.StagedBlocks, writer/engine.py).

An append stages its block's row (its position from the writer's cache); the batch's rows go in
with as few multi-row INSERTs as their count's powers of two, before anything else reads or
writes the state: a later command's lookups (an id's retry, a context not cached), a guarded
command (outside its savepoint), the log's write. A failing insert undoes the batch whole,
whichever command's read set it off.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import dump_state, replay_dump
from timelined import commands as cmd
from timelined.api.model import Context, Conversation
from timelined.api.timeline import AppendBlocksReply, AppendResult
from timelined.config import LogConfig, default_config
from timelined.errors import BlockIdConflict, InternalError, InvalidArgument, TimelinedError
from timelined.state.apply import BLOCK_COLUMNS, StagedBlocks
from timelined.writer.engine import Engine

_real_insert = StagedBlocks.insert


def _config(tmp_path: Path) -> Any:
    return default_config(tmp_path / "state", log=LogConfig(fsync="off"))


async def _one_batch(engine: Engine, commands: list[cmd.Command]) -> list[Any]:
    """Each command's result or error, all queued before the writer takes them: one batch."""
    results: dict[int, Any] = {}
    batches = engine.stats.batches

    async def one(i: int) -> None:
        try:
            results[i] = await engine.submit(commands[i])
        except TimelinedError as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(commands)):
            tg.start_soon(one, i)
    assert engine.stats.batches - batches <= 1, "the commands did not run in one batch"
    return [results[i] for i in range(len(commands))]


async def _root(engine: Engine) -> tuple[str, str]:
    conv = await engine.submit(cmd.CreateConversation(name="c"))
    assert isinstance(conv, Conversation)
    return conv.id, conv.root_context_id


def _contents(config: Any) -> list[tuple[str, int, str]]:
    conn = sqlite3.connect(config.state_db)
    try:
        rows = conn.execute("SELECT context_id, position, content FROM blocks ORDER BY seq")
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        conn.close()


def _append(ctx: str, text: str, id: str | None = None) -> cmd.AppendBlock:
    return cmd.AppendBlock(context_id=ctx, role="user", content=text, id=id)


def test_a_batchs_appends_take_one_insert_per_power_of_two(tmp_path: Path) -> None:
    config = _config(tmp_path)
    inserts: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("INSERT INTO blocks "):
            inserts.append(sql)

    async def main() -> None:
        async with Engine.open(config) as engine:
            _, root = await _root(engine)
            await engine.submit(_append(root, "first"))  # the root in the writer's cache
            engine._conn.set_trace_callback(trace)
            results = await _one_batch(engine, [_append(root, f"b{i}") for i in range(64)])
            assert len(inserts) == 1, len(inserts)
            inserts.clear()
            results += await _one_batch(engine, [_append(root, f"c{i}") for i in range(7)])
            assert len(inserts) == 3, len(inserts)  # 4 + 2 + 1 rows
            engine._conn.set_trace_callback(None)
            assert [r.block.position for r in results] == list(range(2, 73))
            assert [r.seq for r in results] == list(range(results[0].seq, results[0].seq + 71))
        assert dump_state(config.state_db) == replay_dump(config.log_dir, tmp_path / "r.db")

    anyio.run(main)


def test_the_commands_of_one_batch_see_the_appends_before_them(tmp_path: Path) -> None:
    """Retries by id, a guarded command refused, a sidebar, a merge, AppendBlocks and appends
    to a context not cached, all in one batch after staged appends: each sees the rows before
    it, and the state is the log's replay."""
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv, root = await _root(engine)
            other = await engine.submit(cmd.SpawnSidebar(parent_id=root, reason="o"))
            assert isinstance(other, Context)
            await engine.submit(cmd.ResumeContext(id=root))
            await engine.submit(_append(root, "first"))
            engine._forget_cache("test: `other` not cached")
            await engine.submit(_append(root, "second"))
            results = await _one_batch(
                engine,
                [
                    _append(root, "a", id="b1"),
                    _append(root, "a", id="b1"),  # a retry: the staged row is found
                    _append(root, "changed", id="b1"),
                    _append(root, "c"),
                    cmd.UpdateConversation(id=conv),  # refused under its savepoint
                    _append(other.id, "o1"),  # not cached: its count read after the rows
                    cmd.SpawnSidebar(parent_id=root, reason="s"),
                    _append(root, "d"),
                    cmd.AppendBlocks(
                        context_id=root,
                        blocks=[cmd.NewBlock("user", "e1"), cmd.NewBlock("user", "e2")],
                    ),
                    _append(root, "f", id="b2"),
                    _append(root, "f", id="b2"),
                ],
            )
            a, retry, conflict, c, refused, o1, side, d, e, f, f2 = results
            assert isinstance(a, AppendResult) and a.block.position == 3
            assert isinstance(retry, AppendResult) and retry.seq == a.seq
            assert isinstance(conflict, BlockIdConflict)
            assert isinstance(c, AppendResult) and c.block.position == 4
            assert isinstance(refused, InvalidArgument)
            assert isinstance(o1, AppendResult) and o1.block.position == 1
            assert isinstance(side, Context)
            assert isinstance(d, AppendResult) and d.block.position == 5
            assert isinstance(e, AppendBlocksReply)
            assert [b.position for b in e.blocks] == [6, 7]
            assert isinstance(f, AppendResult) and f.block.position == 8
            assert isinstance(f2, AppendResult) and f2.seq == f.seq
            merged = await engine.submit(cmd.MergeContext(id=side.id, summary="sum"))
            assert isinstance(merged, Context)
            g = await engine.submit(_append(root, "g"))
            assert isinstance(g, AppendResult) and g.block.position == 10  # the merge block: 9
        conn = sqlite3.connect(config.state_db)
        upto = conn.execute("SELECT inherit_upto FROM contexts WHERE id = ?", (side.id,))
        assert upto.fetchone()[0] == 4  # "a" and "c" counted: staged before the spawn
        conn.close()
        assert [(p, t) for ctx, p, t in _contents(config) if ctx == root] == [
            (1, "first"),
            (2, "second"),
            (3, "a"),
            (4, "c"),
            (5, "d"),
            (6, "e1"),
            (7, "e2"),
            (8, "f"),
            (9, "sum"),
            (10, "g"),
        ]
        assert dump_state(config.state_db) == replay_dump(config.log_dir, tmp_path / "r.db")

    anyio.run(main)


def _insert_failing_on_boom(self: StagedBlocks, conn: sqlite3.Connection) -> None:
    """The INSERT of the staged rows, failing after it when a block's content is "boom"."""
    boom = any(row[BLOCK_COLUMNS.index("content")] == "boom" for row in self.rows)
    _real_insert(self, conn)
    if boom:
        raise OverflowError("after the INSERT")


@pytest.mark.parametrize(
    "then",
    [
        pytest.param(lambda root: _append(root, "retry", id="x"), id="an-id-lookup"),
        pytest.param(lambda root: cmd.SpawnSidebar(parent_id=root, reason="r"), id="guarded"),
        pytest.param(lambda root: _append(root, "last"), id="the-batchs-end"),
    ],
)
def test_a_failing_insert_undoes_the_batch_whoever_set_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: Any
) -> None:
    """The staged rows of earlier appends go in when a later command reads the state (an
    AppendBlock with an id looks it up), before a guarded command's savepoint, or at the
    batch's end: wherever their INSERT fails, every command of the batch gets the error and
    nothing of it stays; the writer goes on."""
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            _, root = await _root(engine)
            await engine.submit(_append(root, "kept"))
            await engine.caught_up()
            before, seq = dump_state(config.state_db), engine.last_seq
            monkeypatch.setattr(StagedBlocks, "insert", _insert_failing_on_boom)
            results = await _one_batch(
                engine, [_append(root, "a"), _append(root, "boom"), then(root)]
            )
            assert all(isinstance(r, InternalError) for r in results), results
            assert all("after the INSERT" in r.message for r in results)
            assert engine.fatal is None and engine.last_seq == seq
            monkeypatch.setattr(StagedBlocks, "insert", _real_insert)
            await engine.caught_up()
            assert dump_state(config.state_db) == before
            after = await engine.submit(_append(root, "after"))
            assert isinstance(after, AppendResult) and after.block.position == 2
        assert dump_state(config.state_db) == replay_dump(config.log_dir, tmp_path / "r.db")

    anyio.run(main)
