"""Two daemons on one PostgreSQL database, writing concurrently: the must-show run of issue 20.

`two_daemon_run(store, base, scratch, seconds, conns)`: two `timelined serve` processes (fsync
on) on `store`, `conns` connections each appending to the same contexts for `seconds`; then
every acknowledged block is in BOTH daemons' reads at consecutive positions (the daemons' reads
agree block for block), the chain of the log table verifies, and the state equals a replay of it.
Run short by `make test` (tests/contract/test_two_daemons.py), for 60 s by `make stress`
(tests/stress/test_pg_two_daemons.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio

from tests.contract.load import Tally, make_contexts, missing, read_all, writer
from tests.daemon.harness import DaemonProcess
from tests.stores import Store

CONTEXTS = 8  # shared by every writer of both daemons: they contend for each context's positions


@dataclass(frozen=True)
class RunResult:
    seconds: float
    conns: int
    acked: tuple[int, int]  # per daemon
    events: int  # the chain's length

    def line(self) -> str:
        rate = sum(self.acked) / self.seconds
        return (
            f"pg-two-daemons: seconds={self.seconds:g} conns={self.conns}x2 "
            f"acked={self.acked[0]}+{self.acked[1]} ({rate:,.0f}/s) events={self.events} lost=0"
        )


def two_daemon_run(
    store: Store, base: Path, scratch: Path, seconds: float, conns: int = 64
) -> RunResult:
    assert store.shared
    daemons: list[DaemonProcess] = []
    for name in ("a", "b"):
        (base / name).mkdir()
        limits = {"max_connections": 1024, "max_connections_per_uid": 512}
        daemons.append(
            DaemonProcess(base / name, **store.overrides(), log={"fsync": "always"}, limits=limits)
        )
    try:
        for daemon in daemons:
            daemon.start()
        tallies = anyio.run(_write, daemons, seconds, conns)
        for tally in tallies:
            assert not tally.errors, f"{tally.name}: {len(tally.errors)} errors: {tally.errors[:3]}"
            assert tally.acked, f"{tally.name} acknowledged nothing"
        acked = [a for t in tallies for a in t.acked]
        contexts = sorted({context for context, _ in acked})
        views = [anyio.run(read_all, d.socket_path, contexts) for d in daemons]
        for daemon, view in zip(daemons, views, strict=True):
            lost = missing(acked, view)
            assert not lost, f"{daemon.base.name}'s reads lack {len(lost)}, e.g. {lost[:5]}"
        assert views[0] == views[1], "the two daemons' reads differ"
        codes = [d.stop() for d in daemons]
        assert codes == [0, 0], [d.log()[-3000:] for d in daemons]
    finally:
        for daemon in daemons:
            daemon.kill()
    state_dir = daemons[0].state_dir
    chain = store.chain(state_dir, scratch)
    assert chain.ok, chain
    assert store.dump(state_dir) == store.replay(state_dir, scratch)
    return RunResult(seconds, conns, (len(tallies[0].acked), len(tallies[1].acked)), chain.records)


async def _write(daemons: list[DaemonProcess], seconds: float, conns: int) -> list[Tally]:
    contexts = await make_contexts(daemons[0].socket_path, CONTEXTS)
    tallies = [Tally(d.base.name) for d in daemons]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for daemon, tally in zip(daemons, tallies, strict=True):
            for n in range(conns):
                tg.start_soon(writer, daemon.socket_path, contexts, n, tally, stop)
        await anyio.sleep(seconds)
        stop.set()
    return tallies
