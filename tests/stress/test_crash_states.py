"""Crash-state enumeration on larger, random workloads: `make stress ROUNDS=N`.

Each round draws (from its own seed) a starting point (a fresh directory, a clean stop with the
marker, or an unclean stop with a torn tail to cut at boot), a segment size, a random workload of
every kind of command — single commands and concurrent batches of up to six, blocks from a few
bytes to several sectors — sometimes a disk that fills up part-way through a batch, sometimes
log.fsync = "interval" (then what must survive is what was fsynced), and a clean or an unclean
stop. Every crash point of the round is enumerated with every crash state
(tests/faults/simdisk.py) and every state-database variant, booted and checked as in
tests/faults/test_crash_states.py. One summary line:

    crash-states: trials=N acknowledged_checked=N lost=0 failed_boots=0
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.faults.harness import (
    FullDisk,
    Workload,
    check_recording,
    fast_dir,
    make_config,
    prepare,
    record,
    text,
)
from tests.faults.simdisk import SimDisk, Tally
from tests.stress.rounds import stress_rounds, summary
from timelined import commands as cmd
from timelined.auditlog.segments import list_segments
from timelined.errors import TimelinedError
from timelined.writer.engine import Engine

SIZES = (12, 200, 480, 700, 1500, 3000)


def random_workload(seed: int, steps: int) -> Workload:
    async def workload(engine: Engine) -> None:
        rng = random.Random(seed)
        contexts: list[str] = []

        async def submit(command: cmd.Command) -> Any:
            try:
                return await engine.submit(command)
            except TimelinedError:
                return None  # refusals and a full disk are part of the workload

        for step in range(steps):
            r = rng.random()
            if not contexts or r < 0.1:
                conv = await submit(cmd.CreateConversation(name=f"conversation {seed}.{step}"))
                if conv is not None:
                    contexts.append(conv.root_context_id)
            elif r < 0.6:
                n = rng.choice((1, 1, 2, 3, 6))
                async with anyio.create_task_group() as tg:
                    for k in range(n):
                        content = text(seed * 1000 + step * 10 + k, rng.choice(SIZES))
                        tg.start_soon(
                            submit,
                            cmd.AppendBlock(
                                context_id=rng.choice(contexts), role="user", content=content
                            ),
                        )
            elif r < 0.75:
                child = await submit(
                    cmd.SpawnSidebar(
                        parent_id=rng.choice(contexts), reason="a detour", inherit_last=2
                    )
                )
                if child is not None:
                    contexts.append(child.id)
            elif r < 0.85:
                await submit(cmd.MergeContext(id=rng.choice(contexts), summary="merged back"))
            elif r < 0.9:
                await submit(cmd.PauseContext(id=rng.choice(contexts)))
            elif r < 0.95:
                await submit(cmd.Focus(context_id=rng.choice(contexts)))
            else:
                await anyio.sleep(0.004)  # lets an "interval" fsync fall due (or the timer fire)

    return workload


def one_round(seed: int) -> Tally:
    """One random workload, every crash state of it checked; runs in a worker process."""
    tally = Tally()
    rng = random.Random(seed)
    segment_bytes = rng.choice((1024, 2048, 4096, 16384))
    start = rng.choice(("fresh", "clean", "torn"))
    clean = rng.random() < 0.5
    steps = rng.randint(4, 9)
    full_disk = rng.random() < 0.3
    older = rng.random() < 0.35  # the older-database variant in a third of the rounds
    interval = rng.random() < 0.25  # log.fsync = "interval": only fsynced events must survive
    with fast_dir(f"tl-stress-{seed}-") as work:
        config = make_config(
            work / "live" / "state",
            segment_bytes,
            "interval" if interval else "always",
            rng.choice((1, 3, 10)),
        )
        if start != "fresh":
            prepare(config, random_workload(seed + 10**6, 4), clean=start == "clean")
        if start == "torn":
            seg = Path(list_segments(config.log_dir)[-1].path)
            with seg.open("ab") as fh:
                fh.write(b'{"seq":' + bytes(rng.randint(1, 900)))
        nth, room = rng.randint(1, steps), rng.randint(1, 1500)

        def factory(root: Path, db: Path) -> SimDisk:
            return FullDisk(root, db, nth, room) if full_disk else SimDisk(root, db_path=db)

        rec = record(config, random_workload(seed, steps), clean=clean, sim_factory=factory)
        check_recording(rec, work, tally, older=older)
    tally.failures = [f"round {seed}: {failure}" for failure in tally.failures]
    return tally


@pytest.mark.stress
def test_crash_states_of_random_workloads() -> None:
    rounds = stress_rounds()
    total = Tally()
    started = time.monotonic()
    workers = max(1, min(4, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for tally in pool.map(one_round, range(rounds)):
            for name in ("points", "states", "trials", "acknowledged_checked", "lost"):
                setattr(total, name, getattr(total, name) + getattr(tally, name))
            total.failed_boots += tally.failed_boots
            total.failures += tally.failures[: max(0, 20 - len(total.failures))]
    summary(total.line())
    print(
        f"crash-states detail: rounds={rounds} points={total.points} states={total.states} "
        f"workers={workers} seconds={time.monotonic() - started:.0f}"
    )
    assert total.trials > 0 and total.acknowledged_checked > 0
    assert total.lost == 0 and total.failed_boots == 0, "\n".join(total.failures)
