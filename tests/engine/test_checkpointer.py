"""The state's WAL checkpoints on a thread of their own (state/checkpointer.py).

The writer's connection never checkpoints (its COMMIT may have a read waiting for it); the
checkpointer copies the WAL back on its own connection, stands aside while a repair swaps the
state file, and is stopped before the engine's last TRUNCATE checkpoint.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.config import LogConfig, default_config
from timelined.state import checkpointer as checkpointer_module
from timelined.state.checkpointer import Checkpointer
from timelined.writer.engine import Engine


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Checkpoints by hand unless a test says otherwise.
    monkeypatch.setattr(checkpointer_module, "CHECKPOINT_INTERVAL_S", 3600.0)
    return default_config(tmp_path / "state", log=LogConfig(fsync="off"))


async def _appends(engine: Engine, ctx: str, n: int) -> None:
    for i in range(n):
        await engine.submit(cmd.AppendBlock(context_id=ctx, role="user", content=f"m{i} " * 40))
    await engine.caught_up()


async def _root(engine: Engine) -> str:
    conv = await engine.submit(cmd.CreateConversation(name="c"))
    assert isinstance(conv, Conversation)
    return conv.root_context_id


def _autocheckpoint(engine: Engine) -> int:
    return int(engine._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def test_the_writer_leaves_the_wal_to_the_checkpointer_which_lets_it_restart(config: Any) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            checkpointer = engine.checkpointer
            assert checkpointer is not None
            assert await engine._on_writer_thread(_autocheckpoint, engine) == 0
            root = await _root(engine)
            await _appends(engine, root, 300)
            assert await anyio.to_thread.run_sync(checkpointer.checkpoint)
            grown = checkpointer.wal_frames
            assert grown > 50
            # Everything was copied back: the writer's next write starts the WAL over.
            await _appends(engine, root, 1)
            assert await anyio.to_thread.run_sync(checkpointer.checkpoint)
            assert checkpointer.wal_frames < grown / 4
            assert checkpointer.failures == 0
            # Not "another process wrote the state" for the verifier's poll.
            assert not await engine.data_version_changed()

    anyio.run(main)


def test_the_checkpointer_runs_by_itself_and_stops_with_the_engine(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpointer_module, "CHECKPOINT_INTERVAL_S", 0.02)

    async def main() -> Checkpointer:
        async with Engine.open(config) as engine:
            checkpointer = engine.checkpointer
            assert checkpointer is not None
            root = await _root(engine)
            await _appends(engine, root, 50)
            with anyio.fail_after(10):
                while checkpointer.runs < 3:  # noqa: ASYNC110 (a thread of its own: polled)
                    await anyio.sleep(0.02)
        return checkpointer

    checkpointer = anyio.run(main)
    assert not checkpointer._thread.is_alive()
    runs = checkpointer.runs
    assert not checkpointer.checkpoint() and checkpointer.runs == runs  # closed
    # The engine's last checkpoint emptied the WAL after the checkpointer stopped.
    wal = Path(f"{config.state_db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_no_checkpoint_while_the_writer_is_paused(config: Any) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            checkpointer = engine.checkpointer
            assert checkpointer is not None
            root = await _root(engine)
            await _appends(engine, root, 20)
            async with engine.paused():
                assert not await anyio.to_thread.run_sync(checkpointer.checkpoint)
                assert checkpointer._conn is None  # the file may be swapped meanwhile
            assert await anyio.to_thread.run_sync(checkpointer.checkpoint)

    anyio.run(main)


def test_a_failing_checkpoint_is_counted_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    checkpointer = Checkpointer(missing, interval_s=3600)
    assert not checkpointer.checkpoint()
    assert checkpointer.failures == 1 and checkpointer.runs == 0
    assert not missing.exists()
    # It retries with a new connection: once the file is there, it runs.
    conn = sqlite3.connect(missing)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    try:
        assert checkpointer.checkpoint()
        assert checkpointer.runs == 1
    finally:
        checkpointer.close()
        conn.close()


def test_a_read_only_engine_has_no_checkpointer(config: Any) -> None:
    async def main() -> None:
        async with Engine.open(config) as engine:
            await _root(engine)
        from timelined.errors import LogDamaged

        async with Engine.open(config, read_only=LogDamaged(1, "test")) as engine:
            assert engine.checkpointer is None

    anyio.run(main)
