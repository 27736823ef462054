"""Every method and every reachable named error, through the async client, against the real
handlers and authorizer served in-process (fast: no subprocess, fsync off). Part of the
contract suite: each test runs on each backend (`store`, tests/stores.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from tests.daemon.harness import inprocess_config, inprocess_daemon, short_tempdir
from tests.stores import Store
from timelined.api import ReloadReply
from timelined.api.timeline import SearchReply
from timelined.auditlog.record import line_hash
from timelined.client import (
    AsyncClient,
    Client,
    InterfaceNotFound,
    InvalidParameter,
    MethodNotFound,
)
from timelined.config import LimitsConfig
from timelined.errors import (
    BadQuery,
    BlockIdConflict,
    BlockNotFound,
    ConfigError,
    ContextNotFound,
    ConversationNotFound,
    CrossConversationMove,
    CrossRefNotFound,
    CycleError,
    FeatureUnavailable,
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
    LogDamaged,
    ReportNotFound,
)


@pytest.fixture
def base() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


async def test_conversations(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        created = [await c.create_conversation(f"c{i}", {"i": i}) for i in range(5)]
        assert created[0].name == "c0" and created[0].metadata == {"i": 0}
        assert created[0].status == "active" and created[0].root_context_id.startswith("ctx_")
        assert await c.get_conversation(created[1].id) == created[1]

        page = await c.list_conversations(limit=2)
        seen = [x.id for x in page.conversations]
        while page.next is not None:
            page = await c.list_conversations(limit=2, after=page.next)
            seen += [x.id for x in page.conversations]
        assert seen == [x.id for x in created]

        renamed = await c.update_conversation(created[0].id, name="renamed")
        assert renamed.name == "renamed" and renamed.metadata == {"i": 0}
        meta = await c.update_conversation(created[0].id, metadata={"k": "v"})
        assert meta.metadata == {"k": "v"} and meta.name == "renamed"
        with pytest.raises(InvalidArgument) as bad:
            await c.update_conversation(created[0].id)
        assert bad.value.params["parameter"] == "name"

        archived = await c.archive_conversation(created[4].id, reason="done")
        assert archived.status == "archived" and archived.archive_reason == "done"
        listed = await c.list_conversations()
        assert created[4].id not in [x.id for x in listed.conversations]
        listed = await c.list_conversations(include_archived=True)
        assert created[4].id in [x.id for x in listed.conversations]
        with pytest.raises(InvalidTransition) as refused:
            await c.append_block(created[4].root_context_id, "user", "late")
        assert refused.value.params["status"] == "archived"

        with pytest.raises(ConversationNotFound) as missing:
            await c.get_conversation("conv_nope")
        assert missing.value.params["id"] == "conv_nope" and missing.value.id == "conv_nope"  # type: ignore[attr-defined]
        for call in (
            c.get_tree("conv_nope"),
            c.get_conversation_stats("conv_nope"),
            c.archive_conversation("conv_nope"),
        ):
            with pytest.raises(ConversationNotFound):
                await call


async def test_context_lifecycle_and_focus(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        conv = await c.create_conversation("tree")
        root = conv.root_context_id
        side = await c.spawn_sidebar(root, "look something up", inherit_last=0)
        assert side.parent_id == root and side.status == "active" and side.reason
        assert (await c.get_context(root)).status == "paused"
        state = await c.get_startup_state()
        assert state.has_data and state.focused_context is not None
        assert state.focused_context.id == side.id
        assert state.focused_conversation is not None and state.focused_conversation.id == conv.id

        assert (await c.pause_context(side.id)).status == "paused"
        with pytest.raises(InvalidTransition) as again:
            await c.pause_context(side.id)
        assert again.value.params["status"] == "paused"
        assert again.value.params["action"] == "pause"
        assert (await c.resume_context(side.id)).status == "active"
        assert (await c.focus(root)).id == root
        assert (await c.get_startup_state()).focused_context.id == root  # type: ignore[union-attr]

        with pytest.raises(InvalidTransition):
            await c.merge_context(root, "roots do not merge")
        merged = await c.merge_context(side.id, "found it")
        assert merged.status == "merged"
        with pytest.raises(InvalidTransition):
            await c.merge_context(side.id, "only once")
        parent_blocks = await c.list_blocks(root)
        assert [b.role for b in parent_blocks.blocks] == ["system"]
        assert parent_blocks.blocks[0].content == "found it"

        other = await c.spawn_sidebar(root, "second")
        assert (await c.archive_context(other.id, reason="dead end")).status == "archived"
        with pytest.raises(InvalidTransition):
            await c.archive_context(other.id)
        assert (await c.restore_context(other.id)).status == "paused"
        with pytest.raises(InvalidTransition):
            await c.restore_context(other.id)

        a = await c.spawn_sidebar(root, "a")
        b = await c.spawn_sidebar(a.id, "b")
        with pytest.raises(CycleError):
            await c.reparent_context(a.id, b.id)
        with pytest.raises(CycleError):
            await c.reparent_context(a.id, a.id)
        moved = await c.reparent_context(b.id, other.id)
        assert moved.parent_id == other.id
        elsewhere = await c.create_conversation("elsewhere")
        with pytest.raises(CrossConversationMove) as crossed:
            await c.reparent_context(b.id, elsewhere.root_context_id)
        assert crossed.value.params["target_conversation_id"] == elsewhere.id

        tree = await c.get_tree(conv.id)
        assert tree[0].id == root and {x.id for x in tree} == {root, side.id, other.id, a.id, b.id}

        tagged = await c.set_tags(a.id, ["x", "y", "x"])
        assert tagged.tags == ["x", "y"]
        ref = await c.add_crossref(a.id, other.id, "see-also", note="n")
        assert (await c.get_context(a.id)).crossrefs == [ref]
        assert (await c.get_context(other.id)).crossrefs == [ref]
        with pytest.raises(InvalidArgument):
            await c.add_crossref(a.id, a.id, "self")
        assert (await c.revoke_crossref(ref.id)).id == ref.id
        assert (await c.get_context(a.id)).crossrefs == []
        with pytest.raises(CrossRefNotFound):
            await c.revoke_crossref(ref.id)

        for call in (
            c.get_context("ctx_nope"),
            c.spawn_sidebar("ctx_nope", "r"),
            c.pause_context("ctx_nope"),
            c.focus("ctx_nope"),
            c.list_blocks("ctx_nope"),
            c.get_history("ctx_nope"),
            c.append_block("ctx_nope", "user", "x"),
            c.set_tags("ctx_nope", []),
        ):
            with pytest.raises(ContextNotFound):
                await call


async def test_blocks_paging_and_filters(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        conv = await c.create_conversation("blocks")
        ctx = conv.root_context_id
        first = await c.append_block(
            ctx,
            "user",
            "hello",
            id="blk_client_1",
            timestamp="2030-01-01T00:00:00+01:00",
            time_taken=1.5,
            tokens_input=3,
            tokens_output=4,
            metadata={"model": "m"},
            sub_blocks=[{"type": "thought", "content": "hmm", "tokens_output": 2}],
        )
        b = first.block
        assert b.id == "blk_client_1" and b.seq == first.seq and b.position == 1
        assert b.timestamp == "2029-12-31T23:00:00.000000Z"
        assert b.tokens_input == 3 and b.metadata == {"model": "m"}
        assert b.sub_blocks[0].type == "thought" and b.sub_blocks[0].tokens_output == 2
        assert await c.get_block(b.id) == b

        # A retry with the same id and content is the stored block; other content is refused.
        retry = await c.append_block(
            ctx,
            "user",
            "hello",
            id="blk_client_1",
            timestamp="2030-01-01T00:00:00+01:00",
            time_taken=1.5,
            tokens_input=3,
            tokens_output=4,
            metadata={"model": "m"},
            sub_blocks=[{"type": "thought", "content": "hmm", "tokens_output": 2}],
        )
        assert retry == first
        with pytest.raises(BlockIdConflict) as conflict:
            await c.append_block(ctx, "user", "other", id="blk_client_1")
        assert conflict.value.params["context_id"] == ctx
        with pytest.raises(BlockNotFound):
            await c.get_block("blk_nope")

        roles = ["user", "assistant", "tool"]
        for i in range(2, 31):
            await c.append_block(
                ctx, roles[i % 3], f"message {i}", timestamp=f"2030-01-02T00:00:{i:02d}Z"
            )
        # forward
        positions: list[int] = []
        cursor: int | None = None
        while True:
            page = await c.list_blocks(ctx, after=cursor, limit=7)
            positions += [x.position for x in page.blocks]
            if page.next is None:
                break
            cursor = page.next
        assert positions == list(range(1, 31))
        # backward from the end
        positions = []
        before = 10**9
        while True:
            page = await c.list_blocks(ctx, before=before, limit=7)
            positions = [x.position for x in page.blocks] + positions
            if page.next is None:
                break
            before = page.next
        assert positions == list(range(1, 31))
        # filters
        tools = await c.list_blocks(ctx, roles=["tool"])
        assert {x.role for x in tools.blocks} == {"tool"} and len(tools.blocks) == 10
        window = await c.list_blocks(
            ctx, since="2030-01-02T00:00:10Z", until="2030-01-02T00:00:20+00:00"
        )
        assert [x.content for x in window.blocks] == [f"message {i}" for i in range(10, 20)]
        with pytest.raises(InvalidArgument) as bad_time:
            await c.list_blocks(ctx, since="yesterday")
        assert bad_time.value.params["parameter"] == "since"


async def test_paging_sees_every_block_once_while_writers_append(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        ctx = (await c.create_conversation("busy")).root_context_id
        for i in range(20):
            await c.append_block(ctx, "user", f"before {i}")
        seen: list[int] = []

        async def writer() -> None:
            for i in range(80):
                await c.append_block(ctx, "assistant", f"during {i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            cursor = 0
            while len(seen) < 100:
                page = await c.list_blocks(ctx, after=cursor, limit=3)
                seen += [x.position for x in page.blocks]
                if page.blocks:
                    cursor = page.blocks[-1].position
                await anyio.lowlevel.checkpoint()
        assert seen == list(range(1, 101))


async def test_history_across_three_levels_with_merges(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        conv = await c.create_conversation("history")
        root = conv.root_context_id
        r = [(await c.append_block(root, "user", f"r{i}")).block.id for i in range(1, 5)]
        a = await c.spawn_sidebar(root, "A", inherit_last=2)
        a1 = (await c.append_block(a.id, "user", "a1")).block.id
        a2 = (await c.append_block(a.id, "assistant", "a2")).block.id
        b = await c.spawn_sidebar(a.id, "B", inherit_last=3)
        b1 = (await c.append_block(b.id, "user", "b1")).block.id
        cc = await c.spawn_sidebar(b.id, "C", inherit_last=100)
        c1 = (await c.append_block(cc.id, "user", "c1")).block.id
        # Blocks appended to an ancestor after a spawn are not part of the child's history.
        await c.append_block(root, "user", "r-late")

        def shape(items: list[Any]) -> list[tuple[str, str, bool]]:
            return [(h.block.id, h.source_context_id, h.inherited) for h in items]

        assert shape(await c.get_history(cc.id)) == [
            (r[3], root, True),
            (a1, a.id, True),
            (a2, a.id, True),
            (b1, b.id, True),
            (c1, cc.id, False),
        ]
        assert shape(await c.get_history(cc.id, limit=2)) == [(b1, b.id, True), (c1, cc.id, False)]
        await c.merge_context(cc.id, "C says hi")
        history_b = await c.get_history(b.id)
        assert [h.block.content for h in history_b] == ["r4", "a1", "a2", "b1", "C says hi"]
        assert history_b[-1].block.role == "system" and not history_b[-1].inherited
        assert [h.block.content for h in await c.get_history(a.id)] == ["r3", "r4", "a1", "a2"]
        assert len(await c.get_history(root)) == 5


async def test_search_and_stats(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        one = await c.create_conversation("one")
        two = await c.create_conversation("two")
        await c.append_block(one.root_context_id, "user", "the quick brown fox", tokens_input=5)
        await c.append_block(
            one.root_context_id, "assistant", "a lazy dog", tokens_output=7, time_taken=0.5
        )
        await c.append_block(two.root_context_id, "user", "another quick fox")
        hits = await c.search_blocks("quick")
        assert {h.conversation_id for h in hits} == {one.id, two.id}
        assert all("[quick]" in h.snippet for h in hits)
        assert [
            h.conversation_id for h in await c.search_blocks("fox", conversation_id=two.id)
        ] == [two.id]
        only = await c.search_blocks("fox OR dog", context_id=one.root_context_id, role="assistant")
        assert [h.role for h in only] == ["assistant"]
        assert len(await c.search_blocks("fox", limit=1)) == 1
        if store.backend == "sqlite":  # FTS5's query syntax
            with pytest.raises(BadQuery) as bad:
                await c.search_blocks('"unterminated')
            assert bad.value.params["query"] == '"unterminated'
            with pytest.raises(BadQuery):
                await c.search_blocks("AND")
        else:  # websearch_to_tsquery reads any text as a query (docs/operations.md)
            assert await c.search_blocks('"unterminated') == []
            assert await c.search_blocks('"fox quick"') == []  # a phrase: in its order
            assert len(await c.search_blocks('"quick brown"')) == 1
        with pytest.raises(ConversationNotFound):
            await c.search_blocks("fox", conversation_id="conv_nope")

        await c.spawn_sidebar(one.root_context_id, "s")
        stats = await c.get_conversation_stats(one.id)
        assert stats.blocks == 2 and stats.blocks_per_role == {"assistant": 1, "user": 1}
        assert (stats.tokens_input, stats.tokens_output, stats.time_taken) == (5, 7, 0.5)
        assert stats.contexts_per_status == {"active": 1, "paused": 1}


async def test_wrong_types_and_unknown_names(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        with pytest.raises(InvalidParameter) as wrong:
            await c.call("io.timelined.Timeline.GetContext", {"id": 42})
        assert wrong.value.params["parameter"] == "id"
        with pytest.raises(InvalidParameter) as missing:
            await c.call("io.timelined.Timeline.AppendBlock", {"context_id": "x", "role": "u"})
        assert missing.value.params["parameter"] == "content"
        with pytest.raises(InvalidParameter) as unknown:
            await c.call("io.timelined.Timeline.GetContext", {"id": "x", "bogus": 1})
        assert unknown.value.params["parameter"] == "bogus"
        with pytest.raises(InvalidParameter) as limit:
            await c.list_conversations(limit=5000)
        assert limit.value.params["parameter"] == "limit"
        with pytest.raises(InvalidParameter) as role:
            await c.append_block("ctx", "not a role!", "x")
        assert role.value.params["parameter"] == "role"
        with pytest.raises(MethodNotFound):
            await c.call("io.timelined.Timeline.Nope", {})
        with pytest.raises(InterfaceNotFound):
            await c.call("io.example.Nope.Method", {})
        assert "AppendBlock" in await c.get_interface_description("io.timelined.Timeline")
        info = await c.get_info()
        assert {"io.timelined.Timeline", "io.timelined.Admin"} <= set(info.interfaces)


async def test_block_size_limit(base: Path, store: Store) -> None:
    config = inprocess_config(
        base, limits=LimitsConfig(max_block_bytes=1024), store=store.store_config()
    )
    async with inprocess_daemon(base, config=config) as run, AsyncClient(run.socket_path) as c:
        ctx = (await c.create_conversation("small")).root_context_id
        await c.append_block(ctx, "user", "x" * 100)
        with pytest.raises(LimitExceeded) as big:
            await c.append_block(ctx, "user", "x" * 5000)
        assert big.value.params["limit"] == "max_block_bytes"
        assert big.value.params["maximum"] == 1024
        assert len((await c.list_blocks(ctx)).blocks) == 1
        # Every event is held to it, not only a block: a line past it could outgrow the Watch
        # and ReadLog replies that carry it, for every reader of the log.
        side = await c.spawn_sidebar(ctx, "small")
        head = (await c.read_log()).events
        for refused in (
            c.set_tags(ctx, [f"tag-{i:04d}-" + "x" * 40 for i in range(40)]),
            c.spawn_sidebar(ctx, "r" * 5000),
            c.add_crossref(ctx, side.id, "see-also", "n" * 5000),
        ):
            with pytest.raises(LimitExceeded) as event:
                await refused
            assert event.value.params["limit"] == "max_block_bytes"
            assert isinstance(size := event.value.params["size"], int) and size > 1024
        assert (await c.read_log()).events == head  # nothing written
        assert (await c.get_context(ctx)).tags == []


async def test_a_contexts_cross_references_are_bounded(base: Path, store: Store) -> None:
    """AddCrossRef past `max_crossref_bytes_per_context` (on either side) is refused by name and
    writes nothing, so every context's GetContext still fits a reply; the bound counts each
    reference as the reply encodes it (escapes included), and revoking one makes room."""
    bound = 4096
    limits = LimitsConfig(max_crossref_bytes_per_context=bound)
    config = inprocess_config(base, limits=limits, store=store.store_config())
    async with inprocess_daemon(base, config=config) as run, AsyncClient(run.socket_path) as c:
        root = (await c.create_conversation("refs")).root_context_id
        side = (await c.spawn_sidebar(root, "side")).id
        other = (await c.spawn_sidebar(root, "other")).id
        # Escapes of every kind the reply writes: a quote, a backslash, short and \u00XX ones.
        note = 'q"b\\n\n\t\x01\x1f\x7f é—🙂 ' * 8
        added = []
        with pytest.raises(LimitExceeded) as full:
            for _ in range(100):
                added.append(await c.add_crossref(root, side, "see-also", note))
        head = (await c.read_log()).events
        held = sum(len(msgspec.json.encode(r)) + 1 for r in (await c.get_context(root)).crossrefs)
        like_the_refused = len(msgspec.json.encode(added[0])) + 1
        assert {k: full.value.params[k] for k in ("limit", "size", "maximum")} == {
            "limit": f"limits.max_crossref_bytes_per_context (the cross-references of {root})",
            "size": held + like_the_refused,
            "maximum": bound,
        }
        assert held <= bound < held + like_the_refused and len(added) >= 2
        # The other side is bounded too: `side` holds the same references.
        with pytest.raises(LimitExceeded) as target:
            await c.add_crossref(other, side, "see-also", note)
        assert target.value.params["limit"].endswith(f"of {side})")
        assert (await c.read_log()).events == head  # nothing written
        assert (await c.get_context(side)).crossrefs == added
        await c.revoke_crossref(added[0].id)
        assert (await c.add_crossref(other, side, "see-also", note)).to_id == side


async def test_a_search_after_writes_without_blocks_sees_them_indexed(
    base: Path, store: Store
) -> None:
    """A search waits until everything acknowledged before it is indexed, and says so. After
    writes that add no block (a conversation, a sidebar, tags) nothing waits for the index: the
    search answered after its whole wait (1 s) with `indexed_seq` behind them, because only an
    index pass moved it and no pass had anything to do."""
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        root = (await c.create_conversation("s")).root_context_id  # seq 1
        side = (await c.spawn_sidebar(root, "look")).id  # 2
        await c.set_tags(side, ["t"])  # 3
        reply = await c.call("io.timelined.Timeline.SearchBlocks", {"query": "hello"})
        assert isinstance(reply, SearchReply)
        assert reply.hits == [] and reply.indexed_seq == 3
        await c.append_block(side, "user", "hello")  # 4
        await c.set_tags(side, ["u"])  # 5
        reply = await c.call("io.timelined.Timeline.SearchBlocks", {"query": "hello"})
        assert isinstance(reply, SearchReply)
        assert len(reply.hits) == 1 and reply.indexed_seq == 5


async def test_read_log_is_the_log_byte_for_byte(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        ctx = (await c.create_conversation("log")).root_context_id
        for i in range(25):
            await c.append_block(ctx, "user", f'line {i} with "quotes" and ünïcode')
        got: list[bytes] = []
        after = 0
        while True:
            page = await c.read_log(after_seq=after, limit=10)
            got += [bytes(raw) for raw in page.events]
            if page.next is None:
                break
            after = page.next

        def log_bytes() -> bytes:
            return b"".join(store.log_lines(run.config.state_dir))

        stored = await anyio.to_thread.run_sync(log_bytes)  # the segments, or the log table
        assert b"".join(line + b"\n" for line in got) == stored
        assert all(msgspec.json.decode(line)["hash"] == line_hash(line) for line in got)
        assert [msgspec.json.decode(line)["seq"] for line in got] == list(range(1, 27))
        tail = await c.read_log(after_seq=24)
        assert len(tail.events) == 2 and tail.next is None
        assert (await c.read_log(after_seq=1000)).events == []


async def test_status_reports_and_recovery(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        await c.create_conversation("s")
        status = await c.get_status()
        assert status.last_seq == 1 and len(status.head_hash) == 64
        assert status.boot.verdict == "clean" and status.boot.report_id == run.app.boot.id
        assert status.verify == {"state": "never"}
        assert status.connections.open >= 1 and status.writer.queue_depth == 0
        assert status.read_only is None and status.uptime_s >= 0

        reports = await c.list_reports()
        assert [r.id for r in reports] == [run.app.boot.id]
        assert reports[0].kind == "boot" and reports[0].verdict == "clean"
        assert await c.list_reports(kind="recovery") == []
        assert await c.get_recovery_report() is None  # no unclean boot yet
        boot = await c.get_recovery_report(run.app.boot.id)
        assert boot is not None and boot.id == run.app.boot.id and boot.kind == "boot"
        for bad in ("nope", "../../etc/passwd", "boot-x/../../y"):
            with pytest.raises(ReportNotFound):
                await c.get_recovery_report(bad)


class FakeVerifier:
    def __init__(self) -> None:
        self.runs = 0

    async def verify(self, wait: bool = True) -> Any:
        self.runs += 1
        return {"ok": True, "events": 3} if wait else None

    def status(self) -> Any:
        return {"state": "idle", "runs": self.runs}

    def latest(self) -> Any:
        return {"ok": True, "events": 3} if self.runs else None

    async def repair(self) -> Any:
        return {"rebuilt": True}


async def test_admin_delegates_to_the_verifier_and_reloader(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        for call in (c.verify(), c.get_verify_report(), c.repair(), c.reload()):
            with pytest.raises(FeatureUnavailable):
                await call
        run.app.verifier = FakeVerifier()
        assert await c.get_verify_report() is None
        started = await c.verify()
        assert started.result is None and started.status == {"state": "idle", "runs": 1}
        done = await c.verify(wait=True)
        assert done.result == {"ok": True, "events": 3}
        assert await c.get_verify_report() == {"ok": True, "events": 3}
        assert (await c.get_status()).verify == {"state": "idle", "runs": 2}
        assert await c.repair() == {"rebuilt": True}

        class FakeReloader:
            def __init__(self, reply: ReloadReply | ConfigError) -> None:
                self.reply = reply

            async def reload(self) -> ReloadReply:
                if isinstance(self.reply, ConfigError):
                    raise self.reply
                return self.reply

        run.app.reloader = FakeReloader(ReloadReply(changed=["limits.max_connections"]))
        assert (await c.reload()).changed == ["limits.max_connections"]
        run.app.reloader = FakeReloader(ReloadReply(changed=[], restart_required=["log.fsync"]))
        reply = await c.reload()
        assert reply.changed == [] and reply.restart_required == ["log.fsync"]

        refusal = ConfigError("limits.max_connections", "expected >= 1", "/etc/x.toml")
        run.app.reloader = FakeReloader(refusal)
        with pytest.raises(ConfigError) as refused:
            await c.reload()
        assert refused.value.params["key"] == "limits.max_connections"


async def test_a_read_only_engine_refuses_writes_and_serves_reads(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        conv = await c.create_conversation("before the damage")
    damage = LogDamaged(1, "test damage")
    async with (
        inprocess_daemon(base, read_only=damage, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        assert (await c.get_conversation(conv.id)).name == "before the damage"
        with pytest.raises(LogDamaged) as refused:
            await c.create_conversation("after")
        assert refused.value.params["seq"] == 1
        assert (await c.get_status()).read_only == damage.message


async def test_the_blocking_client(base: Path, store: Store) -> None:
    async with inprocess_daemon(base, store=store.store_config()) as run:

        def use() -> None:
            with Client(run.socket_path, timeout=10) as c:
                conv = c.create_conversation("sync")
                result = c.append_block(conv.root_context_id, "user", "hi")
                assert c.get_block(result.block.id) == result.block
                side = c.spawn_sidebar(conv.root_context_id, "side", inherit_last=1)
                assert [h.block.content for h in c.get_history(side.id)] == ["hi"]
                with pytest.raises(ContextNotFound):
                    c.get_context("ctx_nope")
                assert c.get_status().last_seq == 3  # the connection survives an error

        await anyio.to_thread.run_sync(use)


async def test_list_reports_includes_verification_reports(base: Path, store: Store) -> None:
    async with (
        inprocess_daemon(base, store=store.store_config()) as run,
        AsyncClient(run.socket_path) as c,
    ):
        reports_dir = run.config.reports_dir
        verify_id = "verify-20991231T000000000000Z-1"

        def write() -> None:
            body = {"id": verify_id, "kind": "verify", "state": "drift", "started_at": "t"}
            (reports_dir / f"{verify_id}.json").write_bytes(msgspec.json.encode(body))
            (reports_dir / "recovery-broken.json").write_bytes(b"{not json")

        await anyio.to_thread.run_sync(write)
        infos = {r.id: r for r in await c.list_reports()}
        assert infos[verify_id].kind == "verify" and infos[verify_id].verdict == "drift"
        assert infos["recovery-broken"].verdict == "unreadable"
        assert [r.id for r in await c.list_reports(kind="verify")] == [verify_id]
        with pytest.raises(InvalidArgument, match="is a verification report: `timelinectl ve"):
            await c.get_recovery_report(verify_id)
