"""The state's COMMIT after the answers, coalesced across batches (writer/engine.py).

A batch is answered once its lines are in the log; its rows wait in the writer's open
transaction and are committed with the batches after it when a read waits for them, when
COMMIT_MAX_EVENTS wait (COMMIT_MAX_APPENDS while no savepoint was used in the transaction), or
COMMIT_DELAY_S after the first of them. These tests stretch the delay
so that what is committed when is deterministic, and read the state file through a connection of
their own (what the verifier, a backup or an operator's sqlite3 sees).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.faults.faultops import FaultOps
from tests.helpers import dump_state, replay_dump
from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.api.timeline import AppendResult
from timelined.config import LogConfig, default_config
from timelined.errors import DiskFull, InternalError, TimelinedError
from timelined.state import queries as q
from timelined.state.apply import BLOCK_COLUMNS, StagedBlocks
from timelined.writer import engine as engine_module
from timelined.writer.engine import Engine


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Nothing commits by the clock during a test: only reads, the event count and the drain do.
    monkeypatch.setattr(engine_module, "COMMIT_DELAY_S", 3600.0)
    return default_config(tmp_path / "state", log=LogConfig(fsync="off"))


def _outside(config: Any, sql: str) -> int:
    """One number as another connection sees the state (committed rows only)."""
    conn = sqlite3.connect(f"file:{config.state_db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def committed_seq(config: Any) -> int:
    return _outside(config, "SELECT last_seq FROM meta")


def blocks_seen(config: Any) -> int:
    return _outside(config, "SELECT count(*) FROM blocks")


async def _conversation(engine: Engine) -> str:
    conv = await engine.submit(cmd.CreateConversation(name="c"))
    assert isinstance(conv, Conversation)
    return conv.root_context_id


async def _append(engine: Engine, ctx: str, text: str) -> AppendResult:
    r = await engine.submit(cmd.AppendBlock(context_id=ctx, role="user", content=text))
    assert isinstance(r, AppendResult)
    return r


def test_many_batches_are_committed_by_one_commit_when_a_read_asks(config: Any) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            start_seq, commits = committed_seq(config), engine.stats.state_commits
            batches = engine.stats.batches
            for n in range(40):  # one at a time: 40 batches
                await _append(engine, root, f"m{n}")
            assert engine.stats.batches - batches == 40
            # Answered, in the log, and not yet in the committed state.
            assert engine.acked_seq == start_seq + 40 and engine.committed_seq == start_seq
            assert committed_seq(config) == start_seq and blocks_seen(config) == 0
            # A read sees every answered write: it asks for the commit and waits for it.
            with anyio.fail_after(5):
                blocks, _ = await engine.read(q.list_blocks, root, limit=100)
            assert [b.content for b in blocks] == [f"m{n}" for n in range(40)]
            assert engine.stats.state_commits - commits == 1
            assert committed_seq(config) == start_seq + 40 and blocks_seen(config) == 40

    anyio.run(main)


def test_answered_rows_commit_by_themselves_after_the_delay(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            monkeypatch.setattr(engine_module, "COMMIT_DELAY_S", 0.2)
            done = await _append(engine, root, "x")
            assert committed_seq(config) < done.seq  # not committed with its answer
            # Nobody reads: the idle writer's timer commits it.
            with anyio.fail_after(10):
                while committed_seq(config) < done.seq:  # noqa: ASYNC110 (another connection: polled)
                    await anyio.sleep(0.02)
            assert engine.committed_seq == done.seq

    anyio.run(main)


def test_commit_max_appends_commits_a_transaction_of_appends_without_a_read(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AppendBlock batches join the open transaction without a savepoint: the larger bound."""
    monkeypatch.setattr(engine_module, "COMMIT_MAX_EVENTS", 4)
    monkeypatch.setattr(engine_module, "COMMIT_MAX_APPENDS", 10)

    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            commits = engine.stats.state_commits
            for n in range(25):
                await _append(engine, root, f"m{n}")
            assert engine.stats.state_commits - commits == 2  # at 10 and 20 events waiting
            assert blocks_seen(config) == 20

    anyio.run(main)


def test_a_savepoint_in_the_open_transaction_brings_its_bound_to_commit_max_events(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a command behind a savepoint (here an AppendBlocks) joined the transaction, it
    commits at COMMIT_MAX_EVENTS; the next transaction, of appends only, at COMMIT_MAX_APPENDS."""
    monkeypatch.setattr(engine_module, "COMMIT_MAX_EVENTS", 10)
    monkeypatch.setattr(engine_module, "COMMIT_MAX_APPENDS", 1_000)
    monkeypatch.setattr(engine_module, "INDEX_DELAY_S", 3600.0)  # its pass commits first

    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            commits = engine.stats.state_commits
            for n in range(3):
                await _append(engine, root, f"m{n}")
            pair = [cmd.NewBlock(role="user", content=f"pair {n}") for n in range(2)]
            await engine.submit(cmd.AppendBlocks(context_id=root, blocks=pair))
            for n in range(4):
                await _append(engine, root, f"n{n}")
            await anyio.sleep(0.1)  # a COMMIT follows its batch's answer: give it the time
            assert engine.stats.state_commits == commits  # 9 events wait
            await _append(engine, root, "tenth")
            with anyio.fail_after(5):
                while engine.stats.state_commits == commits:  # noqa: ASYNC110 (a counter)
                    await anyio.sleep(0.01)
            assert blocks_seen(config) == 10
            for n in range(15):  # a new transaction, of appends only
                await _append(engine, root, f"o{n}")
            await anyio.sleep(0.1)
            assert engine.stats.state_commits - commits == 1
            assert blocks_seen(config) == 10

    anyio.run(main)


def test_a_refused_batch_leaves_the_answered_batches_before_it(config: Any) -> None:
    """A full disk refuses a batch joined to an open transaction holding answered batches: only
    the refused batch is undone (its savepoint), the answered ones are committed later."""
    disk = FaultOps()  # armed below

    async def main() -> None:
        async with Engine.open(config, fileops=disk) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            answered = [await _append(engine, root, f"kept {n}") for n in range(3)]
            assert engine.committed_seq < answered[-1].seq  # they wait in the open transaction
            disk.arm("write", err=errno.ENOSPC, sticky=True)
            with pytest.raises(DiskFull):
                await _append(engine, root, "refused")
            disk.lift()
            assert engine.fatal is None
            after = await _append(engine, root, "after")
            assert after.block.position == 4  # the refused append left no count behind
            blocks, _ = await engine.read(q.list_blocks, root, limit=100)
            assert [b.content for b in blocks] == ["kept 0", "kept 1", "kept 2", "after"]
        assert dump_state(config.state_db) == replay_dump(
            config.log_dir, config.state_dir / "replay.db"
        )

    anyio.run(main)


def test_a_batch_of_appends_joins_the_open_transaction_without_a_savepoint(config: Any) -> None:
    """Its only statement is its rows' INSERT; a batch with another command keeps its savepoint."""

    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await _append(engine, root, "first")  # the open transaction holds answered rows
            statements: list[str] = []
            engine._conn.set_trace_callback(statements.append)
            try:
                await _append(engine, root, "joined")
                assert [s.split()[0] for s in statements] == ["INSERT"]
                statements.clear()
                await engine.submit(cmd.UpdateConversation(id=await _other(engine), name="n"))
                assert "SAVEPOINT batch" in statements and "RELEASE batch" in statements
            finally:
                engine._conn.set_trace_callback(None)
        assert dump_state(config.state_db) == replay_dump(
            config.log_dir, config.state_dir / "replay.db"
        )

    anyio.run(main)


async def _other(engine: Engine) -> str:
    conv = await engine.submit(cmd.CreateConversation(name="other"))
    assert isinstance(conv, Conversation)
    return conv.id


def test_a_refused_batch_of_appends_of_every_kind_leaves_no_row(config: Any) -> None:
    """A batch of appends joined without a savepoint, refused by a full disk, is undone by
    deleting its blocks' rows: staged ones, an AppendBlocks' (inserted in its own savepoint),
    and an append to a context the writer's cache did not hold (inserted at once)."""
    disk = FaultOps()  # armed below

    async def main() -> None:
        async with Engine.open(config, fileops=disk) as engine:
            root = await _conversation(engine)
            other = await engine.submit(cmd.CreateConversation(name="cold"))
            assert isinstance(other, Conversation)
            await _append(engine, root, "kept")
            assert engine.committed_seq < engine.acked_seq  # the open transaction holds it
            engine._forget_cache("test: the next append to `other` misses the cache")
            await _append(engine, root, "cached again")
            disk.arm("write", err=errno.ENOSPC, sticky=True)
            blocks = [cmd.NewBlock(role="user", content=f"many {n}") for n in range(3)]
            pending = [
                engine.enqueue(cmd.AppendBlock(context_id=root, role="user", content="staged")),
                engine.enqueue(cmd.AppendBlocks(context_id=root, blocks=blocks)),
                engine.enqueue(
                    cmd.AppendBlock(context_id=other.root_context_id, role="user", content="cold")
                ),
            ]
            for p in pending:
                done = anyio.Event()
                p.add_done_callback(done.set)
                await done.wait()
                assert isinstance(p.error, DiskFull)
            disk.lift()
            assert engine.fatal is None
            after = await _append(engine, root, "after")
            assert after.block.position == 3
        assert dump_state(config.state_db) == replay_dump(
            config.log_dir, config.state_dir / "replay.db"
        )

    anyio.run(main)


def test_an_undone_batch_leaves_the_answered_batches_before_it(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command failing after its INSERT undoes its whole batch (no savepoint per append), and
    only that batch: the answered batches in the same open transaction stay."""
    real_insert = StagedBlocks.insert

    def failing(staged: StagedBlocks, conn: sqlite3.Connection) -> None:
        boom = any(row[BLOCK_COLUMNS.index("content")] == "boom" for row in staged.rows)
        real_insert(staged, conn)
        if boom:
            raise OverflowError("after the INSERT")

    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            kept = await _append(engine, root, "kept")
            assert engine.committed_seq < kept.seq
            monkeypatch.setattr(StagedBlocks, "insert", failing)
            with pytest.raises(InternalError):
                await _append(engine, root, "boom")
            monkeypatch.setattr(StagedBlocks, "insert", real_insert)
            assert engine.fatal is None and engine.last_seq == kept.seq
            blocks, _ = await engine.read(q.list_blocks, root, limit=100)
            assert [b.content for b in blocks] == ["kept"]

    anyio.run(main)


def test_a_transaction_lost_under_answered_rows_is_fatal(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite ending the whole open transaction on an error (a full or failing state disk)
    takes answered rows with it: the writer goes fatal (the boot rolls them forward) rather
    than commit a state missing them."""

    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            await engine.caught_up()
            kept = await _append(engine, root, "kept")

            real_insert = StagedBlocks.insert

            def failing(staged: StagedBlocks, conn: sqlite3.Connection) -> None:
                real_insert(staged, conn)
                conn.execute("ROLLBACK")  # what SQLITE_FULL or SQLITE_IOERR may do
                raise sqlite3.OperationalError("database or disk is full")

            monkeypatch.setattr(StagedBlocks, "insert", failing)
            with pytest.raises(TimelinedError):
                await _append(engine, root, "lost")
            assert engine.fatal is not None
            assert "answered events" in engine.fatal.message
            assert committed_seq(config) < kept.seq
        # The next boot rolls the answered event forward from the log.
        async with Engine.open(default_config(config.state_dir, log=config.log)) as engine:
            blocks, _ = await engine.read(q.list_blocks, root, limit=100)
            assert [b.content for b in blocks] == ["kept"]

    anyio.run(main)


def test_paused_hands_out_a_committed_state(config: Any) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            done = await _append(engine, root, "x")
            async with engine.paused() as conn:
                assert not conn.in_transaction
                assert committed_seq(config) == done.seq
            assert engine.committed_seq == done.seq

    anyio.run(main)


def test_the_drain_commits_what_waits(config: Any) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _conversation(engine)
            for n in range(5):
                await _append(engine, root, f"m{n}")
            assert blocks_seen(config) == 0
        assert blocks_seen(config) == 5
        assert dump_state(config.state_db) == replay_dump(
            config.log_dir, config.state_dir / "replay.db"
        )

    anyio.run(main)
