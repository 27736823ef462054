"""Read-your-writes on a real daemon: an append is answered after the log's fsync and before
its COMMIT, so every read path must wait for that commit (writer/engine.py, `caught_up`).

Many clients append and at once read their write back through GetBlock, ListBlocks, GetHistory,
SearchBlocks and Watch, while readers and other writers keep the writer's batches large. The
window between an answer and its COMMIT is tens of microseconds, shorter than a round trip: a
trigger on `meta` (updated after the answer, just before COMMIT) widens it to milliseconds, so a
read path that does not wait for the commit is caught.
"""

from __future__ import annotations

import sqlite3
from contextlib import aclosing
from pathlib import Path

import anyio

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client import AsyncClient

WRITERS = 12
ROUNDS = 25
READERS = 4


async def _check_own_writes(
    client: AsyncClient, context_id: str, n: int, problems: list[str]
) -> None:
    for i in range(ROUNDS):
        token = f"ryw{n}x{i}token"
        done = await client.append_block(context_id, "user", f"note {token} from writer {n}")
        block = done.block
        if (await client.get_block(block.id)).seq != done.seq:
            problems.append(f"GetBlock of {block.id}")
        listed = await client.list_blocks(context_id, after=block.position - 1, limit=1)
        if [b.id for b in listed.blocks] != [block.id]:
            problems.append(f"ListBlocks after {block.position - 1}: {listed.blocks}")
        history = await client.get_history(context_id, limit=1)
        if [h.block.id for h in history] != [block.id]:
            problems.append(f"GetHistory of {context_id}: {history}")
        hits = await client.search_blocks(token)
        if [h.block_id for h in hits] != [block.id]:
            problems.append(f"SearchBlocks {token}: {hits}")
        async with aclosing(await client.watch(after_seq=done.seq - 1)) as events:
            with anyio.fail_after(10):
                async for event in events:
                    if event.seq != done.seq:
                        problems.append(f"Watch after {done.seq - 1} began at {event.seq}")
                    break


async def _read_forever(client: AsyncClient, context_id: str) -> None:
    while True:
        await client.list_blocks(context_id, limit=20)


def _slow_commits(state_db: Path, pad: int = 600, on: str = "UPDATE ON meta") -> None:
    """Make every batch's meta update (after the answer, before COMMIT) take ~pad² steps (600:
    milliseconds); `on`: another update to slow down instead (the trigger's event)."""
    conn = sqlite3.connect(state_db, isolation_level=None)
    try:
        conn.execute("CREATE TABLE pad (x INTEGER)")
        conn.executemany("INSERT INTO pad VALUES (?)", [(i,) for i in range(pad)])
        conn.execute(
            f"CREATE TRIGGER slow_commit AFTER {on} BEGIN "
            "SELECT count(*) FROM pad a, pad b WHERE a.x + b.x = -1; END"
        )
    finally:
        conn.close()


def test_every_read_path_sees_the_callers_own_write_under_load() -> None:
    problems: list[str] = []

    async def main(socket: Path) -> None:
        async with AsyncClient(socket, max_idle=WRITERS + READERS) as client:
            roots = []
            for n in range(WRITERS):
                conv = await client.create_conversation(f"ryw-{n}")
                roots.append(conv.root_context_id)
            async with anyio.create_task_group() as readers:
                for n in range(READERS):
                    readers.start_soon(_read_forever, client, roots[n])
                with anyio.fail_after(120):
                    async with anyio.create_task_group() as writers:
                        for n, root in enumerate(roots):
                            writers.start_soon(_check_own_writes, client, root, n, problems)
                readers.cancel_scope.cancel()

    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            pass  # the first boot creates the state
        _slow_commits(daemon.state_dir / "state.db")
        with daemon:
            anyio.run(main, daemon.socket_path)
    assert not problems, problems[:10]


def test_kill_9_between_the_answer_and_the_commit_loses_nothing() -> None:
    async def append(socket: Path) -> tuple[str, str]:
        async with AsyncClient(socket) as client:
            conv = await client.create_conversation("k")
            done = await client.append_block(
                conv.root_context_id, "user", "answered, not committed"
            )
            return conv.root_context_id, done.block.id

    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            pass
        state_db = daemon.state_dir / "state.db"
        _slow_commits(state_db, pad=2000)  # each COMMIT ~0.1-1 s behind its answer
        daemon.start()
        try:
            root, block_id = anyio.run(append, daemon.socket_path)
        finally:
            daemon.kill()  # kill -9 while the append's COMMIT is still running
        conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT id FROM blocks WHERE id = ?", (block_id,)).fetchall()
        finally:
            conn.close()
        assert rows == [], "the kill landed after the COMMIT: the window was not hit"
        conn = sqlite3.connect(state_db, isolation_level=None)
        try:
            conn.execute("DROP TRIGGER slow_commit")
        finally:
            conn.close()

        async def read_back(socket: Path) -> list[str]:
            async with AsyncClient(socket) as client:
                assert (await client.get_block(block_id)).context_id == root
                return [b.id for b in (await client.list_blocks(root)).blocks]

        with daemon:
            assert anyio.run(read_back, daemon.socket_path) == [block_id]


def test_the_merkle_tree_answers_include_the_callers_own_append() -> None:
    """GetInclusionProof and GetCheckpoint right after an append (answered before its COMMIT,
    and the tree learns of it only from the commit) include it: they wait for the caller's
    commits like every other read. The slow `meta` trigger widens the window to milliseconds."""

    async def main(socket: Path) -> None:
        async with AsyncClient(socket) as client:
            conv = await client.create_conversation("tree")
            for i in range(5):
                done = await client.append_block(conv.root_context_id, "user", f"t{i}")
                proof = await client.get_inclusion_proof(done.seq)
                assert proof.tree_size >= done.seq, (i, proof.tree_size, done.seq)
                done = await client.append_block(conv.root_context_id, "user", f"c{i}")
                size = int((await client.get_checkpoint()).split("\n")[1])
                assert size >= done.seq, (i, size, done.seq)

    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            pass
        _slow_commits(daemon.state_dir / "state.db")
        with daemon:
            anyio.run(main, daemon.socket_path)
