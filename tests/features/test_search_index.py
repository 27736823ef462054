"""The search index after the commits (writer/engine.py `_index_committed`), on a real daemon.

The writer indexes blocks in transactions of their own, after the batches' COMMITs; a search
waits, bounded, until every block acknowledged before it is indexed, and its reply says how far
the index is (`indexed_seq`). A kill -9 between a batch's COMMIT and its index's leaves a gap
that the boot fills: search finds everything, the state equals a replay, verification is clean.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.features.test_read_your_writes import _slow_commits
from tests.helpers import dump_state, replay_dump
from timelined.api.timeline import SearchReply
from timelined.client import AsyncClient
from timelined.verifier.state import check_state

SEARCH = "io.timelined.Timeline.SearchBlocks"
WRITERS = 16
ROUNDS = 20


async def _search(client: AsyncClient, token: str) -> SearchReply:
    reply = await client.call(SEARCH, {"query": token})
    assert isinstance(reply, SearchReply)
    return reply


def test_search_finds_the_callers_append_at_once_under_load() -> None:
    """Every writer searches for its own append as soon as it is answered: the search must wait
    for the index (written up to 25 ms after the commit when nobody asks) and say so."""
    problems: list[str] = []

    async def writer(client: AsyncClient, context_id: str, n: int) -> None:
        for i in range(ROUNDS):
            token = f"fresh{n}x{i}tok"
            done = await client.append_block(context_id, "user", f"note {token}")
            reply = await _search(client, token)
            ids = [h.block_id for h in reply.hits]
            if ids != [done.block.id]:
                problems.append(f"{token}: {ids}")
            if reply.indexed_seq is None or reply.indexed_seq < done.seq:
                problems.append(f"{token}: indexed_seq {reply.indexed_seq} < {done.seq}")

    async def noise(client: AsyncClient, context_id: str) -> None:
        while True:
            await client.append_block(context_id, "assistant", "background words")

    async def main(socket: Path) -> None:
        async with AsyncClient(socket, max_idle=WRITERS + 4) as client:
            roots = [
                (await client.create_conversation(f"s{n}")).root_context_id
                for n in range(WRITERS + 2)
            ]
            async with anyio.create_task_group() as background:
                for root in roots[WRITERS:]:
                    background.start_soon(noise, client, root)
                with anyio.fail_after(120):
                    async with anyio.create_task_group() as writers:
                        for n in range(WRITERS):
                            writers.start_soon(writer, client, roots[n], n)
                background.cancel_scope.cancel()

    with short_tempdir() as base, DaemonProcess(base) as daemon:
        anyio.run(main, daemon.socket_path)
    assert not problems, problems[:10]


def _slow_index(state_db: Path) -> None:
    """Make every index transaction (it sets meta.fts_seq; a batch's commit does not) take
    seconds (6000² steps: 2-5 s on these machines, quiet or not), so a kill -9 0.3 s after the
    appends lands between a COMMIT and its index."""
    _slow_commits(state_db, pad=6000, on="UPDATE OF fts_seq ON meta")


def _undo_slow_index(state_db: Path) -> None:
    conn = sqlite3.connect(state_db, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER slow_commit")
        conn.execute("DROP TABLE pad")
    finally:
        conn.close()


def _committed_blocks(state_db: Path) -> int:
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0])
    finally:
        conn.close()


def test_kill_9_with_an_index_gap_then_boot_finds_everything(tmp_path: Path) -> None:
    tokens = [f"gap{i}word" for i in range(30)]

    async def append(socket: Path) -> dict[str, str]:
        async with AsyncClient(socket, max_idle=len(tokens)) as client:
            root = (await client.create_conversation("gap")).root_context_id
            ids: dict[str, str] = {}

            async def one(token: str) -> None:
                ids[token] = (await client.append_block(root, "user", f"x {token}")).block.id

            async with anyio.create_task_group() as tg:
                for token in tokens:
                    tg.start_soon(one, token)
            return ids

    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            pass  # the first boot creates the state
        state_db = daemon.state_dir / "state.db"
        _slow_index(state_db)
        daemon.start()
        try:
            ids = anyio.run(append, daemon.socket_path)
            # The answered appends are committed COMMIT_DELAY_S later: wait for that rather than
            # trust a fixed sleep to cover it on a loaded machine. Then 0.3 s: the index
            # transaction has begun, and takes seconds.
            deadline = time.monotonic() + 30
            while _committed_blocks(state_db) < len(tokens):
                assert time.monotonic() < deadline, "the answered appends were not committed"
                time.sleep(0.02)
            time.sleep(0.3)
        finally:
            daemon.kill()
        conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
        try:
            fts_seq, last_seq = conn.execute("SELECT fts_seq, last_seq FROM meta").fetchone()
            committed = conn.execute("SELECT count(*) FROM blocks").fetchone()[0]
            indexed = conn.execute("SELECT count(*) FROM blocks_fts_docsize").fetchone()[0]
        finally:
            conn.close()
        assert committed == len(tokens), "every answered append is committed"
        assert fts_seq < last_seq and indexed < committed, "the kill did not land in the gap"
        _undo_slow_index(state_db)

        async def search_all(socket: Path) -> dict[str, list[str]]:
            async with AsyncClient(socket) as client:
                return {t: [h.block_id for h in (await _search(client, t)).hits] for t in tokens}

        with daemon:
            found = anyio.run(search_all, daemon.socket_path)
        assert found == {t: [ids[t]] for t in tokens}
        conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT fts_seq = last_seq FROM meta").fetchone() == (1,)
        finally:
            conn.close()
        assert dump_state(state_db) == replay_dump(daemon.state_dir / "log", tmp_path / "r.db")
        result = check_state(state_db, daemon.state_dir / "log", tmp_path / "work", copy=True)
        assert result.differences_total == 0, result.differences
        assert result.search_index == "documents checked: ok; integrity-check ok"
