"""A COMMIT a read waits for leaves the WAL checkpoint to a later COMMIT (writer/engine.py).

SQLite checkpoints the WAL inside the COMMIT that takes it past `wal_autocheckpoint` pages
(~20 ms for db.py's 4,000). A read under appends waits for a COMMIT (read-your-writes), so it
waited for that checkpoint too. These tests set the write connection's threshold to one page,
so that every COMMIT allowed to checkpoint does, and look at the main database file alone (a
copy without its WAL): what it holds is what a checkpoint moved there.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.api.timeline import AppendResult
from timelined.config import LogConfig, default_config
from timelined.state import queries as q
from timelined.writer import engine as engine_module
from timelined.writer.engine import CHECKPOINT_MAX_SKIPS, Engine


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Nothing commits or indexes by the clock: only the reads and the drain do.
    monkeypatch.setattr(engine_module, "COMMIT_DELAY_S", 3600.0)
    monkeypatch.setattr(engine_module, "INDEX_DELAY_S", 3600.0)
    return default_config(tmp_path / "state", log=LogConfig(fsync="off"))


def main_file_seq(config: Any, scratch: Path) -> int:
    """meta.last_seq in the main database file, its WAL left out."""
    copy = scratch / "main-only.db"
    for stale in scratch.glob("main-only.db*"):
        stale.unlink()
    shutil.copyfile(config.state_db, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT last_seq FROM meta").fetchone()[0])
    finally:
        conn.close()


async def _append(engine: Engine, ctx: str, text: str) -> int:
    r = await engine.submit(cmd.AppendBlock(context_id=ctx, role="user", content=text))
    assert isinstance(r, AppendResult)
    return r.seq


def test_a_read_waits_for_the_commit_but_not_for_a_checkpoint(config: Any, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            root = conv.root_context_id
            async with engine.paused() as conn:  # commits what is answered, checkpoints nothing
                conn.execute("PRAGMA wal_autocheckpoint = 1")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            before = main_file_seq(config, scratch)
            assert before == engine.committed_seq
            for n in range(CHECKPOINT_MAX_SKIPS):
                seq = await _append(engine, root, f"m{n}")
                with anyio.fail_after(5):
                    blocks, _ = await engine.read(q.list_blocks, root, limit=100)
                # The read saw its write (committed) and the COMMIT left the WAL as it was.
                assert len(blocks) == n + 1 and engine.committed_seq == seq
                assert main_file_seq(config, scratch) == before
            # The WAL stays bounded: the next COMMIT in a row checkpoints whoever waits for it.
            seq = await _append(engine, root, "last")
            with anyio.fail_after(5):
                await engine.read(q.list_blocks, root, limit=100)
            assert main_file_seq(config, scratch) == seq
            # The threshold is the connection's own again (a skip restores it).
            async with engine.paused() as conn:
                assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1

    anyio.run(main)


def test_a_commit_no_read_waits_for_still_checkpoints(
    config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "COMMIT_MAX_EVENTS", 2)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    async def main() -> None:
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            async with engine.paused() as conn:
                conn.execute("PRAGMA wal_autocheckpoint = 1")
            await _append(engine, conv.root_context_id, "x")
            seq = await _append(engine, conv.root_context_id, "y")
            # Two events wait: the writer commits them by itself, with nobody reading.
            with anyio.fail_after(5):
                while engine.committed_seq < seq:  # noqa: ASYNC110 (set by the writer loop)
                    await anyio.sleep(0.005)
            assert main_file_seq(config, scratch) == seq

    anyio.run(main)
