"""kill -9 of a daemon mid-batch, on each backend: nothing acknowledged is lost.

Writers (16 connections per daemon, fsync on) append with client-chosen ids; the victim is
killed while its batches are in flight. On PostgreSQL a second daemon serves the same database
throughout: it must keep answering its writers, without an error, while and after the first
dies. Then the victim restarts on its store, and every acknowledged block is in every daemon's
reads, at consecutive positions; the chain verifies; the state equals a replay of the log.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from tests.contract.load import Tally, make_contexts, missing, read_all, writer
from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.stores import Store
from tests.verifier.conftest import until

CONNS = 16
CONTEXTS = 4


def daemon_on(store: Store, base: Path) -> DaemonProcess:
    base.mkdir()
    return DaemonProcess(base, **store.overrides(), log={"fsync": "always"})


def test_kill_9_mid_batch_loses_nothing_acknowledged(store: Store, tmp_path: Path) -> None:
    with short_tempdir("tlr") as base:
        victim = daemon_on(store, base / "a").start()
        other = daemon_on(store, base / "b").start() if store.shared else None
        daemons = [victim] if other is None else [victim, other]
        try:
            tallies = anyio.run(_run, victim, other)
            victim.start()  # the restart on the same store
            acked = [a for t in tallies for a in t.acked]
            contexts = sorted({context for context, _ in acked})
            for daemon in daemons:
                seen = anyio.run(read_all, daemon.socket_path, contexts)
                lost = missing(acked, seen)
                assert not lost, f"{len(lost)} acknowledged blocks lost, e.g. {lost[:5]}"
            assert all(victim.stop() == 0 for victim in daemons), victim.log()
        finally:
            for daemon in daemons:
                daemon.kill()
        state_dir = victim.state_dir
        chain = store.chain(state_dir, tmp_path)
        assert chain.ok, chain
        assert store.dump(state_dir) == store.replay(state_dir, tmp_path)


async def _run(victim: DaemonProcess, other: DaemonProcess | None) -> list[Tally]:
    contexts = await make_contexts(victim.socket_path, CONTEXTS)
    killed = Tally("killed")
    survivor = Tally("survivor")
    never, stop_other = anyio.Event(), anyio.Event()  # the victim's writers end on errors
    async with anyio.create_task_group() as tg:
        for n in range(CONNS):
            tg.start_soon(writer, victim.socket_path, contexts, n, killed, never)
            if other is not None:
                tg.start_soon(writer, other.socket_path, contexts, n, survivor, stop_other)
        await until(
            lambda: len(killed.acked) >= 200 and len(survivor.acked) >= 50 * bool(other), 30
        )
        victim.kill()  # SIGKILL while its writers' batches are in flight
        if other is not None:
            at_kill = len(survivor.acked)
            await until(lambda: len(survivor.acked) >= at_kill + 200, 30)
        stop_other.set()
    assert len(killed.errors) == CONNS, killed.errors  # each writer cut off
    assert not survivor.errors, f"the other daemon failed its writers: {survivor.errors[:3]}"
    return [killed, survivor]
