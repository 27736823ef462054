"""The state's WAL checkpoint: the writer's, after a COMMIT has woken the reads waiting for it
(writer/engine.py, CHECKPOINT_LOG_BYTES), never inside that COMMIT."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.config import LogConfig, default_config
from timelined.state import queries as q
from timelined.writer import engine as engine_module
from timelined.writer.engine import Engine


@pytest.fixture
def config(tmp_path: Path) -> Any:
    return default_config(tmp_path / "state", log=LogConfig(fsync="off"))


async def _root(engine: Engine) -> str:
    conv = await engine.submit(cmd.CreateConversation(name="c"))
    assert isinstance(conv, Conversation)
    return conv.root_context_id


async def _append(engine: Engine, ctx: str, text: str) -> None:
    await engine.submit(cmd.AppendBlock(context_id=ctx, role="user", content=text))


def _wal_frames(config: Any) -> int:
    """Frames in the WAL as another connection sees them (its checkpoint copies them too)."""
    conn = sqlite3.connect(config.state_db)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


def test_the_writer_checkpoints_after_its_commits_and_the_wal_stays_small(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "CHECKPOINT_LOG_BYTES", 64 << 10)

    async def main() -> int:
        async with Engine.open(config) as engine:
            autocheckpoint = await engine._on_writer_thread(
                lambda: engine._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            )
            assert autocheckpoint == 0  # not inside a COMMIT
            root = await _root(engine)
            for n in range(600):
                await _append(engine, root, f"block {n} " + "x" * 400)
                if n % 20 == 19:
                    await engine.caught_up()  # a read: a COMMIT, then the checkpoint if due
            await engine.caught_up()
            assert engine.stats.wal_checkpoints >= 2
            return _wal_frames(config)

    frames = anyio.run(main)
    # ~300 KB of log committed: without checkpoints the WAL would hold well over 300 frames
    # (measured: ~5 bytes of WAL per byte of log); restarted after each, it holds the last few.
    assert frames < 150


def test_a_read_waiting_for_a_commit_does_not_wait_for_the_checkpoint(
    config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "CHECKPOINT_LOG_BYTES", 1)
    monkeypatch.setattr(engine_module, "COMMIT_DELAY_S", 3600.0)
    entered, release = threading.Event(), threading.Event()
    real = Engine._checkpoint_wal

    def slow_checkpoint(engine: Engine) -> None:
        entered.set()
        release.wait(10)
        real(engine)

    monkeypatch.setattr(Engine, "_checkpoint_wal", slow_checkpoint)

    async def main() -> None:
        async with Engine.open(config) as engine:
            root = await _root(engine)
            await _append(engine, root, "seen")
            with anyio.fail_after(5):
                blocks, _ = await engine.read(q.list_blocks, root, limit=10)
            assert [b.content for b in blocks] == ["seen"]
            # The checkpoint began after the COMMIT (on a loaded machine its thread may only
            # get there after the read): the read did not wait for it to end.
            assert await anyio.to_thread.run_sync(entered.wait, 5)
            assert not release.is_set()
            release.set()
            await _append(engine, root, "after")
            with anyio.fail_after(5):
                blocks, _ = await engine.read(q.list_blocks, root, limit=10)
            assert [b.content for b in blocks] == ["seen", "after"]

    try:
        anyio.run(main)
    finally:
        release.set()
