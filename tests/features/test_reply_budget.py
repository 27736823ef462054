"""Replies stay within `limits.max_message_bytes`: pages shrink, a history too big is refused.

A page of 1,000 blocks of 4 MiB would be a 4 GB reply: the daemon would build it in memory and
no client would accept it. So ListBlocks and ReadLog return fewer items than `limit` (with a
cursor) when more would not fit, never none; GetHistory is whole or refused with a named error
(a model's history silently cut short would be worse); export parts close early.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.daemon.harness import inprocess_config, inprocess_daemon, short_tempdir
from tests.daemon.memory_abuse import call, connect, read_frames, send_call
from timelined import exchange
from timelined.api.exchange import join_parts
from timelined.client import AsyncClient
from timelined.config import LimitsConfig
from timelined.ctl.main import main as ctl_main
from timelined.errors import LimitExceeded

BUDGET = 64 * 1024
BLOCK = 10_000  # characters: about six blocks fit in a reply
COUNT = 20


@pytest.fixture
def base() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


def _limits() -> LimitsConfig:
    return LimitsConfig(max_message_bytes=BUDGET, max_block_bytes=16 * 1024)


async def test_pages_and_histories_within_the_reply_budget(base: Path) -> None:
    config = inprocess_config(base, limits=_limits())
    async with inprocess_daemon(base, config=config) as run, AsyncClient(run.socket_path) as c:
        conv = await c.create_conversation("big blocks")
        ctx = conv.root_context_id
        texts = [f"{i:04d}" + "x" * BLOCK for i in range(COUNT)]
        for text in texts:
            await c.append_block(ctx, "user", text)

        # Forward: short pages with a cursor, every block exactly once, in order.
        seen: list[str] = []
        sizes: list[int] = []
        after: int | None = None
        while True:
            page = await c.list_blocks(ctx, after=after, limit=1000)
            assert page.blocks, "a page is never empty while blocks remain"
            sizes.append(len(page.blocks))
            seen.extend(b.content for b in page.blocks)
            if page.next is None:
                break
            after = page.next
        assert seen == texts
        assert max(sizes) < COUNT and max(sizes) <= BUDGET // BLOCK
        assert len(sizes) >= COUNT * BLOCK // BUDGET

        # Backward from the end: the same blocks, each page ascending.
        back: list[str] = []
        before: int | None = COUNT + 1
        while before is not None:
            page = await c.list_blocks(ctx, before=before, limit=1000)
            assert page.blocks
            back[:0] = [b.content for b in page.blocks]
            before = page.next
        assert back == texts

        # A history that does not fit is refused by name; a shorter one is whole.
        with pytest.raises(LimitExceeded) as refused:
            await c.get_history(ctx)
        assert refused.value.params["limit"] == "limits.max_message_bytes (reply)"
        assert refused.value.params["maximum"] == BUDGET
        last = await c.get_history(ctx, limit=3)
        assert [h.block.content for h in last] == texts[-3:]

        # ReadLog: fewer lines than asked, `next` at the last one sent, no seq skipped.
        seqs: list[int] = []
        after_seq = 0
        rounds = 0
        while True:
            reply = await c.read_log(after_seq=after_seq, limit=1000)
            assert reply.events
            seqs.extend(msgspec.json.decode(bytes(e))["seq"] for e in reply.events)
            rounds += 1
            if reply.next is None:
                break
            after_seq = reply.next
        assert seqs == list(range(1, COUNT + 2))
        assert rounds > 1


async def test_export_parts_close_early_for_big_blocks(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "PART_BYTES", 3 * BLOCK)
    async with inprocess_daemon(base) as run, AsyncClient(run.socket_path) as c:
        conv = await c.create_conversation("export")
        for i in range(COUNT):
            await c.append_block(conv.root_context_id, "user", f"{i}" + "y" * BLOCK)
        parts = [part async for part in await c.export_conversation(conv.id)]
    block_parts = [len(p.blocks) for p in parts if p.blocks]
    event_parts = [len(p.events) for p in parts if p.events]
    assert sum(block_parts) == COUNT and max(block_parts) <= 3
    assert sum(event_parts) == COUNT + 1 and max(event_parts) <= 4
    doc = join_parts(parts)
    assert len(exchange.verify_document(doc)) == COUNT + 1  # still a whole, verifiable export


async def test_search_hits_stop_at_the_reply_budget(base: Path) -> None:
    config = inprocess_config(base, limits=_limits())
    async with inprocess_daemon(base, config=config) as run, AsyncClient(run.socket_path) as c:
        conv = await c.create_conversation("many hits")
        for i in range(200):
            await c.append_block(conv.root_context_id, "user", f"needle {i} " + "h" * 1000)
        hits = await c.search_blocks("needle", limit=1000)
        search = {"query": "needle", "limit": 1000}
        frame = await anyio.to_thread.run_sync(
            call, run.socket_path, "io.timelined.Timeline.SearchBlocks", search
        )
    assert 0 < len(hits) < 200  # 200 snippets of ~400 characters do not fit 64 KiB
    assert all(len(h.snippet) <= 400 for h in hits)
    assert len(frame) <= BUDGET
    assert msgspec.json.decode(frame)["parameters"]["truncated"] is True


def _frames(path: Path, method: str, params: dict[str, Any], more: bool = False) -> list[bytes]:
    with connect(path) as sock:
        send_call(sock, "io.timelined.Timeline." + method, params, more=more)
        return read_frames(sock)


async def test_a_tree_too_large_for_one_reply_comes_in_pages(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding: GetTree and the export's header part held the whole tree, so sidebars with long
    reasons (or many tags and cross-references) made a reply of any size."""
    config = inprocess_config(base, limits=_limits())
    async with inprocess_daemon(base, config=config) as run, AsyncClient(run.socket_path) as c:
        conv = await c.create_conversation("a wide tree")
        spawned = [conv.root_context_id]
        for i in range(40):  # ~2 KB a context: ~80 KB of tree against 64 KiB
            side = await c.spawn_sidebar(spawned[i // 2], f"{i:02d} " + "r" * 2000)
            spawned.append(side.id)
        path = run.socket_path
        first = await anyio.to_thread.run_sync(
            _frames, path, "GetTree", {"conversation_id": conv.id}
        )
        export = await anyio.to_thread.run_sync(
            lambda: _frames(path, "ExportConversation", {"id": conv.id}, more=True)
        )
        tree = await c.get_tree(conv.id)  # every page, one call each
        capsys.readouterr()
        argv = ["--socket", str(path), "--json", "tree", conv.id]
        assert await anyio.to_thread.run_sync(ctl_main, argv) == 0
        shown = msgspec.json.decode(capsys.readouterr().out)["contexts"]
        parts = [part async for part in await c.export_conversation(conv.id)]
    assert len(first[0]) <= BUDGET
    page = msgspec.json.decode(first[0])["parameters"]
    assert 0 < len(page["contexts"]) < len(spawned) and page["next"] is not None
    assert [ctx.id for ctx in tree] == spawned
    assert [ctx["id"] for ctx in shown] == spawned  # timelinectl tree follows the pages too
    assert max(len(frame) for frame in export) <= BUDGET
    assert any(p.contexts for p in parts) and parts[0].header is not None
    doc = join_parts(parts)
    assert [ctx.id for ctx in doc.header.contexts] == spawned
    assert exchange.verify_document(doc)  # the tree the events make is the tree sent


async def test_many_conversations_with_large_metadata_page_by_bytes(base: Path) -> None:
    """Finding: ListConversations sent `limit` conversations whatever their metadata."""
    config = inprocess_config(base, limits=_limits())
    async with inprocess_daemon(base, config=config) as run, AsyncClient(run.socket_path) as c:
        made = [
            (await c.create_conversation(f"conv {i}", {"notes": f"{i} " + "m" * 5000})).id
            for i in range(30)
        ]
        frames = await anyio.to_thread.run_sync(
            _frames, run.socket_path, "ListConversations", {"limit": 1000}
        )
        seen: list[str] = []
        after: int | None = None
        pages = 0
        while True:
            page = await c.list_conversations(limit=1000, after=after)
            assert page.conversations, "a page is never empty while conversations remain"
            seen.extend(conv.id for conv in page.conversations)
            pages += 1
            if page.next is None:
                break
            after = page.next
    assert len(frames[0]) <= BUDGET
    assert msgspec.json.decode(frames[0])["parameters"]["next"] is not None
    assert seen == made and pages >= 3
