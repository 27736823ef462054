"""Watch: catch-up then live, in order, no gap or repeat under concurrent writes; slow drops."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import anyio

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.auditlog.source import FileLogSource
from timelined.config import LogConfig, default_config
from timelined.daemon.watch import LogEvent, WatchHub
from timelined.errors import SlowConsumer
from timelined.writer.engine import Engine


def config_for(tmp_path: Path):  # type: ignore[no-untyped-def]
    return default_config(tmp_path / "s", log=LogConfig(fsync="off"))


async def test_catch_up_then_live_without_gap_or_repeat(tmp_path: Path) -> None:
    async with Engine.open(config_for(tmp_path)) as engine:
        hub = WatchHub(engine, FileLogSource(engine.config.log_dir))
        conv = await engine.submit(cmd.CreateConversation(name="w"))
        assert isinstance(conv, Conversation)
        root = conv.root_context_id
        for i in range(300):
            await engine.submit(cmd.AppendBlock(context_id=root, role="user", content=f"a{i}"))
        seen: list[LogEvent] = []
        total = 1 + 300 + 8 * 100

        async def writer(n: int) -> None:
            for i in range(100):
                await engine.submit(
                    cmd.AppendBlock(context_id=root, role="user", content=f"{n}-{i}")
                )

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(writer, n)
            with anyio.fail_after(20):
                async with aclosing(hub.watch(after_seq=0)) as stream:
                    async for event in stream:
                        seen.append(event)
                        if len(seen) == total:
                            break
        assert [e.seq for e in seen] == list(range(1, total + 1))
        assert seen[0].type == "conversation.created"
        assert all(e.hash and e.prev for e in seen)
        assert hub.watchers == 0


async def test_filter_by_conversation(tmp_path: Path) -> None:
    async with Engine.open(config_for(tmp_path)) as engine:
        hub = WatchHub(engine, FileLogSource(engine.config.log_dir))
        a = await engine.submit(cmd.CreateConversation(name="a"))
        b = await engine.submit(cmd.CreateConversation(name="b"))
        assert isinstance(a, Conversation) and isinstance(b, Conversation)
        for conv in (a, b, a):
            await engine.submit(
                cmd.AppendBlock(context_id=conv.root_context_id, role="user", content="x")
            )
        got: list[LogEvent] = []
        with anyio.fail_after(10):
            async with aclosing(hub.watch(conversation_id=a.id, after_seq=0)) as stream:
                async for event in stream:
                    got.append(event)
                    if len(got) == 3:
                        break
        assert [e.seq for e in got] == [1, 3, 5]


async def test_a_stalled_watcher_is_dropped_with_a_named_error(tmp_path: Path) -> None:
    async with Engine.open(config_for(tmp_path)) as engine:
        hub = WatchHub(engine, FileLogSource(engine.config.log_dir), buffer_records=50)
        conv = await engine.submit(cmd.CreateConversation(name="slow"))
        assert isinstance(conv, Conversation)
        stream = hub.watch()
        first = anyio.Event()
        written = anyio.Event()
        outcome: list[BaseException] = []

        async def stalled() -> None:
            try:
                async for _ in stream:
                    first.set()
                    await written.wait()  # stalls while the writer goes on
            except SlowConsumer as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stalled)
            await anyio.sleep(0.05)
            root = conv.root_context_id
            await engine.submit(cmd.AppendBlock(context_id=root, role="user", content="first"))
            await first.wait()
            for i in range(200):  # the writer never waits for the stalled watcher
                await engine.submit(cmd.AppendBlock(context_id=root, role="user", content=str(i)))
            written.set()
        assert engine.last_seq == 202
        assert len(outcome) == 1 and outcome[0].params["buffered"] > 50
        assert hub.watchers == 0 and hub.dropped == 1
