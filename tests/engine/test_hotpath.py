"""The write path's fast paths and the bounded search (docs/performance.md).

- AppendBlock's checks come from the writer's cache (hotstate.py): it follows every other
  event (status changes, merges, archived conversations) and forgets what a refused command or
  an undone batch taught it;
- AppendBlock runs without a savepoint: a failure after its INSERT undoes the whole batch;
- search ranks the most recent SEARCH_RANKED_MATCHES matches only, with the same ranks and
  snippets as an unbounded search when there are fewer.
"""

from __future__ import annotations

import errno
import gc
import itertools
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.faults.faultops import FaultOps
from tests.helpers import dump_state, replay_dump
from timelined import commands as cmd
from timelined.api.model import Context, Conversation
from timelined.api.timeline import AppendBlocksReply, AppendResult
from timelined.config import LogConfig, default_config
from timelined.errors import (
    BadQuery,
    DiskFull,
    InternalError,
    InvalidArgument,
    InvalidTransition,
    TimelinedError,
)
from timelined.state import queries as q
from timelined.state.apply import BLOCK_COLUMNS, StagedBlocks
from timelined.writer import engine as engine_module
from timelined.writer import rules
from timelined.writer.engine import Engine


def _config(tmp_path: Path) -> Any:
    return default_config(tmp_path / "state", log=LogConfig(fsync="off"))


def _state_equals_replay(tmp_path: Path, config: Any) -> None:
    assert dump_state(config.state_db) == replay_dump(config.log_dir, tmp_path / "replay.db")


_real_insert = StagedBlocks.insert
_CONTENT = BLOCK_COLUMNS.index("content")


def _insert_failing_on_boom(self: StagedBlocks, conn: sqlite3.Connection) -> None:
    """The staged block rows' INSERT, failing after it when a block's content is "boom"."""
    boom = any(row[_CONTENT] == "boom" for row in self.rows)
    _real_insert(self, conn)
    if boom:
        raise OverflowError("after the INSERT")


def test_the_cache_follows_every_event(tmp_path: Path) -> None:
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            root = conv.root_context_id

            async def append(ctx: str, text: str) -> AppendResult:
                r = await engine.submit(cmd.AppendBlock(context_id=ctx, role="user", content=text))
                assert isinstance(r, AppendResult)
                return r

            assert (await append(root, "one")).block.position == 1
            assert (await append(root, "two")).block.position == 2
            side = await engine.submit(cmd.SpawnSidebar(parent_id=root, reason="r"))
            assert isinstance(side, Context)
            assert (await append(side.id, "s1")).block.position == 1
            assert (await append(root, "three")).block.position == 3  # a paused parent
            await engine.submit(cmd.MergeContext(id=side.id, summary="sum"))
            # the merge block took position 4 of the parent; the sidebar is merged
            assert (await append(root, "four")).block.position == 5
            with pytest.raises(InvalidTransition):
                await append(side.id, "late")
            await engine.submit(cmd.ArchiveConversation(id=conv.id))
            with pytest.raises(InvalidTransition):
                await append(root, "archived")
        _state_equals_replay(tmp_path, config)

    anyio.run(main)


def test_a_failure_after_the_insert_undoes_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            root = conv.root_context_id
            await engine.submit(cmd.AppendBlock(context_id=root, role="user", content="a"))
            await engine.caught_up()  # answered before its COMMIT: read the file after it
            before = dump_state(config.state_db)
            seq = engine.last_seq
            monkeypatch.setattr(StagedBlocks, "insert", _insert_failing_on_boom)
            results: list[Any] = []

            async def one(text: str) -> None:
                try:
                    results.append(
                        await engine.submit(
                            cmd.AppendBlock(context_id=root, role="user", content=text)
                        )
                    )
                except TimelinedError as exc:
                    results.append(exc)

            async with anyio.create_task_group() as tg:  # one batch: queued before it runs
                for text in ("b", "boom", "c"):
                    tg.start_soon(one, text)
            assert len(results) == 3
            assert all(isinstance(r, InternalError) for r in results), results
            assert engine.last_seq == seq and engine.fatal is None
            assert len(engine.hot) == 0
            assert dump_state(config.state_db) == before
            monkeypatch.setattr(StagedBlocks, "insert", _real_insert)
            r = await engine.submit(cmd.AppendBlock(context_id=root, role="user", content="d"))
            assert isinstance(r, AppendResult) and r.block.position == 2
        _state_equals_replay(tmp_path, config)

    anyio.run(main)


def test_an_undone_command_takes_what_it_taught_the_cache_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each way back (a savepoint, a batch refused by a full disk) forgets the cache: an append
    that was undone leaves no count behind, so the next one takes the position the state says."""
    config = _config(tmp_path)
    disk = FaultOps()  # armed below
    real_execute = rules.execute

    def execute(tx: Any, command: cmd.Command, now: str) -> Any:
        # A guarded command that appends, then is refused: its savepoint undoes the append.
        if isinstance(command, cmd.UpdateConversation) and command.name == "undone":
            ctx = tx.conn.execute(
                "SELECT root_context_id FROM conversations WHERE id = ?", (command.id,)
            ).fetchone()[0]
            real_execute(tx, cmd.AppendBlock(context_id=ctx, role="user", content="x"), now)
            raise InvalidArgument("name", "refused after an append")
        return real_execute(tx, command, now)

    monkeypatch.setattr(rules, "execute", execute)

    async def main() -> None:
        async with Engine.open(config, fileops=disk) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            root = conv.root_context_id

            async def append() -> int:
                r = await engine.submit(cmd.AppendBlock(context_id=root, role="user", content="a"))
                assert isinstance(r, AppendResult)
                return r.block.position

            assert await append() == 1  # the cache now holds the root's count
            with pytest.raises(InvalidArgument):
                await engine.submit(cmd.UpdateConversation(id=conv.id, name="undone"))
            assert await append() == 2
            # A full disk: the batch's append was applied (and counted) before the log refused it.
            disk.arm("write", err=errno.ENOSPC, sticky=True)  # the next write and every one after
            with pytest.raises(DiskFull):
                await append()
            disk.lift()
            assert await append() == 3
            assert engine.stats.disk_full == 1 and engine.fatal is None
        _state_equals_replay(tmp_path, config)

    anyio.run(main)


def test_search_ranks_the_most_recent_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            other = await engine.submit(cmd.CreateConversation(name="d"))
            assert isinstance(conv, Conversation) and isinstance(other, Conversation)
            texts = [
                "apple " * (1 + i % 4) + f"filler number {i} and more words here" for i in range(30)
            ]
            for i, text in enumerate(texts):
                ctx = conv.root_context_id if i % 2 == 0 else other.root_context_id
                role = "user" if i % 3 else "assistant"
                await engine.submit(cmd.AppendBlock(context_id=ctx, role=role, content=text))

    anyio.run(main)
    conn = sqlite3.connect(config.state_db)

    def unbounded(query: str, **kw: Any) -> list[tuple[Any, ...]]:
        monkeypatch.setattr(q, "SEARCH_RANKED_MATCHES", 10**9)
        return [
            (h.seq, h.rank, h.snippet, h.context_id, h.role) for h in q.search(conn, query, **kw)
        ]

    full = unbounded("apple", limit=100)
    assert len(full) == 30
    assert all("[apple]" in snippet for _, _, snippet, _, _ in full)
    ranks = [rank for _, rank, _, _, _ in full]
    assert ranks == sorted(ranks)
    # equal ranks: newest first
    for a, b in itertools.pairwise(full):
        if a[1] == b[1]:
            assert a[0] > b[0]
    # bounded: only the 8 most recent matches are ranked, with the same ranks and snippets
    monkeypatch.setattr(q, "SEARCH_RANKED_MATCHES", 8)
    newest = sorted(seq for seq, *_ in full)[-8:]
    got = [(h.seq, h.rank, h.snippet, h.context_id, h.role) for h in q.search(conn, "apple")]
    assert sorted(seq for seq, *_ in got) == newest
    assert got == [row for row in full if row[0] in newest]
    assert [h.seq for h in q.search(conn, "apple", limit=3)] == [row[0] for row in got[:3]]
    # filters apply before the bound: the 8 most recent matches of that context and role
    root = conn.execute("SELECT root_context_id FROM conversations WHERE name = 'c'").fetchone()[0]
    mine = [row for row in full if row[3] == root and row[4] == "user"]
    newest_mine = sorted(row[0] for row in mine)[-8:]
    got = [
        (h.seq, h.rank, h.snippet, h.context_id, h.role)
        for h in q.search(conn, "apple", context_id=root, role="user")
    ]
    assert got == [row for row in mine if row[0] in newest_mine]
    conv_id = conn.execute("SELECT id FROM conversations WHERE name = 'c'").fetchone()[0]
    by_conv = q.search(conn, "apple", conversation_id=conv_id, limit=100)
    assert {h.conversation_id for h in by_conv} == {conv_id} and len(by_conv) == 8
    assert q.search(conn, "nothingmatches") == []
    with pytest.raises(BadQuery):
        q.search(conn, 'apple AND "')
    conn.close()


def test_an_append_blocks_failing_midway_is_undone_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AppendBlocks keeps its savepoint: a failure after some of its INSERTs (here the third
    block's apply) undoes its blocks and nothing else of the batch; positions stay dense."""
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            root = conv.root_context_id
            monkeypatch.setattr(StagedBlocks, "insert", _insert_failing_on_boom)
            turn = cmd.AppendBlocks(
                context_id=root,
                blocks=[cmd.NewBlock("user", t) for t in ("t1", "t2", "boom", "t4")],
            )
            commands: list[cmd.Command] = [
                cmd.AppendBlock(context_id=root, role="user", content="before"),
                turn,
                cmd.AppendBlock(context_id=root, role="user", content="after"),
            ]
            results: dict[int, Any] = {}

            async def one(i: int) -> None:
                try:
                    results[i] = await engine.submit(commands[i])
                except TimelinedError as exc:
                    results[i] = exc

            async with anyio.create_task_group() as tg:  # one batch: queued before it runs
                for i in range(len(commands)):
                    tg.start_soon(one, i)
            assert isinstance(results[1], InternalError), results
            assert isinstance(results[0], AppendResult) and results[0].block.position == 1
            assert isinstance(results[2], AppendResult) and results[2].block.position == 2
            monkeypatch.setattr(StagedBlocks, "insert", _real_insert)
            ok = await engine.submit(
                cmd.AppendBlocks(context_id=root, blocks=[cmd.NewBlock("user", "t5")])
            )
            assert isinstance(ok, AppendBlocksReply) and [b.position for b in ok.blocks] == [3]
        _state_equals_replay(tmp_path, config)
        conn = sqlite3.connect(config.state_db)
        contents = [r[0] for r in conn.execute("SELECT content FROM blocks ORDER BY position")]
        conn.close()
        assert contents == ["before", "after", "t5"]

    anyio.run(main)


def test_the_index_timer_indexes_without_a_search_asking(tmp_path: Path) -> None:
    """The idle writer loop wakes by itself INDEX_DELAY_S after an append and indexes it (the
    wait is a timer, not a cancel scope: docs/performance.md, "One connection's CPU"); an
    append arriving meanwhile wakes it at once, and the timer of a wait already over is gone."""
    config = _config(tmp_path)

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            for round_ in range(3):
                done = await engine.submit(
                    cmd.AppendBlock(context_id=conv.root_context_id, role="user", content="x")
                )
                assert isinstance(done, AppendResult)
                assert engine.indexed_seq < done.seq, "indexed at once: the timer is not tested"
                # Polled: `index_caught_up` would ask for the index at once, not wait for it.
                step = engine_module.INDEX_DELAY_S / 5
                for _ in range(int(2 / step) + 100):
                    if engine.indexed_seq >= done.seq:
                        break
                    await anyio.sleep(step)
                assert engine.indexed_seq >= done.seq, f"round {round_}: the timer never fired"
                assert engine.queue_depth == 0

    anyio.run(main)


def test_an_idle_writer_keeps_nothing_of_its_last_batch(tmp_path: Path) -> None:
    """Once a batch is answered, the writer loop holds none of it while it waits for the next
    call: neither its results (each block's content) nor its log lines (16 appends of 1 MB,
    one batch: ~30 MiB held until the next batch before)."""
    config = _config(tmp_path)

    async def main() -> float:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            ctx = conv.root_context_id
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                async with anyio.create_task_group() as tg:  # one round: one batch
                    for i in range(16):
                        block = cmd.AppendBlock(
                            context_id=ctx, role="user", content=f"{i:02d}" + "x" * 1_000_000
                        )
                        tg.start_soon(engine.submit, block)
                await engine.index_caught_up(10)  # the COMMIT and the index pass are done too
                assert engine.queue_depth == 0
                gc.collect()
                return (tracemalloc.get_traced_memory()[0] - before) / 2**20
            finally:
                tracemalloc.stop()

    held = anyio.run(main)
    assert held < 4, f"{held:.1f} MiB held by an idle writer"
