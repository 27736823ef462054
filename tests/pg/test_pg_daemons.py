"""Real daemons (`timelined serve` processes) on one PostgreSQL database (writer/pg.py).

One daemon: the API round trips over its socket, and a restart that continues the chain. Two
daemons on the same database writing at once: each reads the other's writes, the log table
holds one chain (seqs 1..N, each line's prev the previous line's hash), each daemon's watchers
get every event in seq order, other daemon's included; appends of both daemons to the same
context get consecutive positions (the writer's cache is forgotten when the other daemon wrote);
kill -9 of one daemon under load loses nothing it acknowledged, and the other keeps serving.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psycopg
import pytest

from tests.daemon.harness import DaemonProcess, serving, short_tempdir
from timelined.api.timeline import LogEvent
from timelined.auditlog.record import decode_line
from timelined.client import AsyncClient
from timelined.client_sync import Client
from timelined.errors import LogDamaged, TimelinedError
from timelined.events import Record
from timelined.varlink.errors import ConnectionFailed

GENESIS = "0" * 64


def _store(dsn: str) -> dict[str, Any]:
    return {"backend": "postgresql", "dsn": dsn}


@contextlib.contextmanager
def _two_daemons(dsn: str) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    with serving(store=_store(dsn)) as a, serving(store=_store(dsn)) as b:
        yield a, b


def _log_table(dsn: str) -> list[Record]:
    """The log table's rows, each line fully checked and decoded (its own hash included)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq, hash, line FROM log ORDER BY seq").fetchall()
    records = []
    for seq, hash_, line in rows:
        record = decode_line(bytes(line))
        assert (record.seq, record.hash) == (seq, hash_)
        records.append(record)
    return records


def _assert_one_chain(records: list[Record]) -> None:
    """Seqs 1..N without a gap, each line's prev the previous line's hash: no fork."""
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    prev = GENESIS
    for record in records:
        assert record.prev == prev, f"seq {record.seq} does not continue the chain"
        prev = record.hash


def test_the_api_round_trips_over_the_socket_and_a_restart_continues(pg_dsn: str) -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, store=_store(pg_dsn))
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("on postgres", {"team": "db"})
            root = conv.root_context_id
            first = client.append_block(root, "user", "the quick brown fox")
            second = client.append_block(root, "assistant", "jumps over the lazy dog")
            side = client.spawn_sidebar(root, "a tangent")
            third = client.append_block(side.id, "user", "a sidebar note about foxes")
            listed = client.list_blocks(root).blocks
            assert [(b.id, b.position) for b in listed] == [
                (first.block.id, 1),
                (second.block.id, 2),
            ]
            assert client.get_block(third.block.id).content == "a sidebar note about foxes"
            assert client.get_conversation(conv.id).metadata == {"team": "db"}
            assert [c.id for c in client.get_tree(conv.id)] == [root, side.id]
            assert client.get_status().last_seq == third.seq
        report = (daemon.state_dir / "reports").glob("boot-*.json")
        assert list(report), "the boot report is in the local state directory"
        assert (daemon.state_dir / "clean-shutdown").exists()

        with daemon, Client(daemon.socket_path) as client:  # the same database, restarted
            assert client.get_status().last_seq == third.seq
            fourth = client.append_block(root, "user", "after the restart")
            assert (fourth.seq, fourth.block.position) == (third.seq + 1, 3)
            assert client.list_blocks(root).blocks[-1].id == fourth.block.id
    _assert_one_chain(_log_table(pg_dsn))


def test_search_finds_what_either_daemon_wrote(pg_dsn: str) -> None:
    with _two_daemons(pg_dsn) as (a, b), Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        root = ca.create_conversation("search").root_context_id
        fox = ca.append_block(root, "user", "the quick brown fox")
        dog = cb.append_block(root, "assistant", "jumps over the lazy dog")
        for client in (ca, cb):
            assert [h.block_id for h in client.search_blocks("lazy dog")] == [dog.block.id]
            assert [h.block_id for h in client.search_blocks("fox")] == [fox.block.id]


def test_appends_of_two_daemons_to_one_context_get_consecutive_positions(pg_dsn: str) -> None:
    """Each daemon's writer caches a context's block count (hotstate.py); once the other
    daemon appended, the count is stale and must be forgotten, or positions repeat."""
    with _two_daemons(pg_dsn) as (a, b), Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        root = ca.create_conversation("shared").root_context_id
        order = [ca, ca, cb, ca, cb, cb, ca, cb, ca, ca, cb]
        results = [c.append_block(root, "user", f"turn {i}") for i, c in enumerate(order)]
        assert [r.block.position for r in results] == list(range(1, len(order) + 1))
        for client in (ca, cb):
            listed = client.list_blocks(root).blocks
            assert [b.content for b in listed] == [f"turn {i}" for i in range(len(order))]
    _assert_one_chain(_log_table(pg_dsn))


def test_an_idle_daemon_follows_the_other_ones_writes(pg_dsn: str) -> None:
    """A daemon that writes nothing still gives its watchers every event of the database, in
    order (the follower: LISTEN, and the log table), and reads them."""
    seen = _Seen()

    async def main(writer: Path, idle: Path) -> list[str]:
        async with AsyncClient(writer) as cw, AsyncClient(idle) as ci:
            async with anyio.create_task_group() as tg:
                ready = anyio.Event()
                tg.start_soon(_watch, ci, seen, ready)
                await ready.wait()
                root = (await cw.create_conversation("followed")).root_context_id
                ids = [(await cw.append_block(root, "user", f"n{i}")).block.id for i in range(30)]
                with anyio.fail_after(30):
                    await seen.reached(31)
                tg.cancel_scope.cancel()
            assert [b.id for b in (await ci.list_blocks(root)).blocks] == ids
            return ids

    with _two_daemons(pg_dsn) as (a, b):
        anyio.run(main, a.socket_path, b.socket_path)
    records = _log_table(pg_dsn)
    assert [(e.seq, e.prev, e.type) for e in seen.events] == [
        (r.seq, r.prev, r.type) for r in records
    ]


def test_a_damaged_row_in_the_log_table_stops_following_and_writes(pg_dsn: str) -> None:
    """A row the follower cannot decode (written behind the daemons' backs) is damage: the
    daemon refuses writes from then on (continuing the chain past it would hide it) and keeps
    serving reads."""
    with serving(store=_store(pg_dsn)) as daemon, Client(daemon.socket_path) as client:
        root = client.create_conversation("tampered").root_context_id
        kept = client.append_block(root, "user", "before the damage")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO log (seq, hash, line) VALUES (%s, %s, %s)",
                (kept.seq + 1, "f" * 64, b'{"not": "a record"}\n'),
            )
            conn.execute("NOTIFY timelined_log, 'someone else'")
        deadline = time.monotonic() + 30
        while client.get_status().read_only is None:
            assert time.monotonic() < deadline, "the damage was not noticed"
            time.sleep(0.05)
        with pytest.raises(LogDamaged) as info:
            client.append_block(root, "user", "after the damage")
        assert info.value.params["seq"] == kept.seq + 1
        assert client.get_block(kept.block.id).content == "before the damage"


WRITERS = 6  # per daemon
ROUNDS = 20  # appends per writer


class _Load:
    """What one daemon's clients acknowledged: block id → (context, content)."""

    def __init__(self, mark: int = 0) -> None:
        self.acked: dict[str, tuple[str, str]] = {}
        self.failures = 0
        self.mark = mark  # `marked` is set once this many appends were acknowledged
        self.marked = anyio.Event()


async def _writer(client: AsyncClient, load: _Load, contexts: list[str], tag: str) -> None:
    for i in range(ROUNDS):
        context = contexts[i % len(contexts)]
        content = f"{tag} append {i}"
        try:
            done = await client.append_block(context, "user", content)
        except (TimelinedError, ConnectionFailed, OSError):
            load.failures += 1
            return  # its daemon is gone (the kill test): stop, as a real client would
        load.acked[done.block.id] = (context, content)
        if len(load.acked) >= load.mark:
            load.marked.set()


class _Seen:
    """A watcher's events; `reached(seq)` waits until it got the event of `seq`."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._changed = anyio.Event()

    def add(self, event: LogEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def reached(self, seq: int) -> None:
        while not self.events or self.events[-1].seq < seq:
            await self._changed.wait()


async def _watch(client: AsyncClient, into: _Seen, ready: anyio.Event) -> None:
    events = await client.watch()
    ready.set()
    async for event in events:
        into.add(event)


def test_two_daemons_write_at_once_and_each_sees_every_event_in_order(pg_dsn: str) -> None:
    seen = {"a": _Seen(), "b": _Seen()}
    loads = {"a": _Load(), "b": _Load()}

    async def main(sockets: dict[str, Path]) -> dict[str, list[str]]:
        async with (
            AsyncClient(sockets["a"], max_idle=WRITERS + 2) as ca,
            AsyncClient(sockets["b"], max_idle=WRITERS + 2) as cb,
        ):
            clients = {"a": ca, "b": cb}
            async with anyio.create_task_group() as watchers:
                for name, client in clients.items():
                    ready = anyio.Event()
                    watchers.start_soon(_watch, client, seen[name], ready)
                    await ready.wait()
                shared = (await ca.create_conversation("shared")).root_context_id
                own = {
                    name: [
                        (await client.create_conversation(f"{name}{n}")).root_context_id
                        for n in range(2)
                    ]
                    for name, client in clients.items()
                }
                with anyio.fail_after(120):
                    async with anyio.create_task_group() as writers:
                        for name, client in clients.items():
                            for n in range(WRITERS):
                                contexts = [shared, *own[name]]
                                tag = f"{name}{n}"
                                writers.start_soon(_writer, client, loads[name], contexts, tag)
                head = len(await anyio.to_thread.run_sync(_log_table, pg_dsn))
                with anyio.fail_after(30):  # the other daemon's last events reach each watcher
                    await seen["a"].reached(head)
                    await seen["b"].reached(head)
                watchers.cancel_scope.cancel()
            listed: dict[str, list[str]] = {}
            for name, client in clients.items():
                blocks = (await client.list_blocks(shared, limit=1000)).blocks
                listed[name] = [b.id for b in blocks]
                assert [b.position for b in blocks] == list(range(1, len(blocks) + 1))
                for ids in own.values():
                    for context in ids:
                        page = await client.list_blocks(context, limit=1000)
                        listed[name] += [b.id for b in page.blocks]
            return listed

    with _two_daemons(pg_dsn) as (a, b):
        listed = anyio.run(main, {"a": a.socket_path, "b": b.socket_path})

    records = _log_table(pg_dsn)
    _assert_one_chain(records)
    acked = {**loads["a"].acked, **loads["b"].acked}
    assert len(acked) == 2 * WRITERS * ROUNDS and not loads["a"].failures + loads["b"].failures
    assert sorted(listed["a"]) == sorted(listed["b"]) == sorted(acked)
    assert sum(1 for r in records if r.type == "block.appended") == len(acked)
    for name in ("a", "b"):
        events = seen[name].events
        assert [e.seq for e in events] == [r.seq for r in records], name
        assert [e.prev for e in events] == [r.prev for r in records], name


def test_kill_9_of_one_daemon_under_load_loses_nothing_acknowledged(pg_dsn: str) -> None:
    loads = {"a": _Load(mark=WRITERS * ROUNDS // 3), "b": _Load()}
    after_kill = _Load()

    async def main(a: DaemonProcess, b: DaemonProcess) -> None:
        async with (
            AsyncClient(a.socket_path, max_idle=WRITERS + 2) as ca,
            AsyncClient(b.socket_path, max_idle=WRITERS + 2) as cb,
        ):
            contexts = {
                name: [
                    (await c.create_conversation(f"{name}{n}")).root_context_id for n in range(3)
                ]
                for name, c in (("a", ca), ("b", cb))
            }

            async def kill_a_mid_load() -> None:
                await loads["a"].marked.wait()
                a.kill()  # SIGKILL: batches in flight die with their transactions

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill_a_mid_load)
                    for n in range(WRITERS):
                        tg.start_soon(_writer, ca, loads["a"], contexts["a"], f"a{n}")
                        tg.start_soon(_writer, cb, loads["b"], contexts["b"], f"b{n}")
            # The survivor keeps serving, writes included (another context of the dead one's).
            await _writer(cb, after_kill, contexts["a"], "after")

    with short_tempdir() as base_a, serving(store=_store(pg_dsn)) as b:
        a = DaemonProcess(base_a, store=_store(pg_dsn)).start()
        try:
            anyio.run(main, a, b)
        finally:
            a.kill()
        assert loads["a"].failures > 0, "the kill did not land under load"
        assert len(after_kill.acked) == ROUNDS
        acked = {**loads["a"].acked, **loads["b"].acked, **after_kill.acked}
        with Client(b.socket_path) as client:
            for block_id, (context, content) in acked.items():
                block = client.get_block(block_id)
                assert (block.context_id, block.content) == (context, content)

        # The killed daemon starts again: its boot report says why nothing was lost.
        with a, Client(a.socket_path) as client:
            assert client.get_status().last_seq == len(_log_table(pg_dsn))
            report = client.get_recovery_report()
            assert report is not None
            text = msgspec.json.encode(report).decode()
            assert "commit in one transaction" in text, text
            some = next(iter(loads["a"].acked))
            assert client.get_block(some).id == some
    _assert_one_chain(_log_table(pg_dsn))
