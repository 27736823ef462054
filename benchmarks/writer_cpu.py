"""The writer thread's CPU per AppendBlock, in process (no socket).

`python benchmarks/writer_cpu.py [--tasks 64] [--appends 12800] [--fsync always|off]
[--contend]`. An engine is opened on a scratch directory as tests/engine does; `--tasks`
callers submit AppendBlock one after another (64: batches of ~64; 1: one append per batch).
Prints one JSON line: the writer thread's CPU (`pthread_getcpuclockid`) per append, the search
index's catch-up included, and the whole process's (the callers and the event loop included:
small batches of appends run on the loop); the writer's waits (voluntary context switches,
mostly for the GIL back) per
append; the mean batch and the wall time per append. `--contend` adds a thread that takes and
drops the GIL as a busy event loop does (Python work between syscalls): what the writer pays
for the GIL handoffs of its own GIL-releasing calls (SQLite's step and reset, os.urandom,
writes) when the event loop is busy, as in the daemon at 64 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.config import LogConfig, default_config
from timelined.writer.engine import Engine

TEXT = "x" * 400 + " a few words for the search index to take"
WRITER_THREAD = "timelined-writer"


def _switches(thread_id: int) -> int:
    """The thread's voluntary context switches: each is a wait, mostly for the GIL back."""
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def _contend(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(200))
        time.sleep(0)  # releases the GIL, as the event loop's syscalls do


async def measure(
    tasks: int, appends: int, fsync: Literal["always", "off"], contend: bool
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="writer-cpu") as tmp:
        config = default_config(Path(tmp) / "state", log=LogConfig(fsync=fsync))
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="bench"))
            assert isinstance(conv, Conversation)
            append = cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=TEXT)
            for _ in range(200):  # warm: the writer's cache, SQLite's statement cache
                await engine.submit(append)
            writer = next(t for t in threading.enumerate() if t.name == WRITER_THREAD)
            assert writer.ident is not None
            clock = time.pthread_getcpuclockid(writer.ident)
            stop = threading.Event()
            if contend:
                threading.Thread(target=_contend, args=(stop,), daemon=True).start()
            per_task = appends // tasks

            async def caller() -> None:
                for _ in range(per_task):
                    await engine.submit(append)

            switches0 = _switches(writer.native_id or 0)
            batches0, cpu0, wall0, process0 = (
                engine.stats.batches,
                time.clock_gettime(clock),
                time.perf_counter(),
                time.process_time(),
            )
            await asyncio.gather(*(caller() for _ in range(tasks)))
            wall = time.perf_counter() - wall0
            stop.set()
            await engine.index_caught_up(10.0)
            cpu = time.clock_gettime(clock) - cpu0
            process = time.process_time() - process0
            switches = _switches(writer.native_id or 0) - switches0
            done = per_task * tasks
            return {
                "tasks": tasks,
                "fsync": fsync,
                "contend": contend,
                "writer_us": round(cpu / done * 1e6, 1),
                # The event loop's thread too: small batches of appends run their commands
                # there (and a batch of one its write), not on the writer's thread.
                "process_us": round(process / done * 1e6, 1),
                "writer_waits": round(switches / done, 2),
                "mean_batch": round(done / max(1, engine.stats.batches - batches0), 1),
                "wall_us": round(wall / done * 1e6, 1),
            }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--appends", type=int, default=12_800)
    parser.add_argument("--fsync", choices=("always", "off"), default="always")
    parser.add_argument("--contend", action="store_true")
    args = parser.parse_args(argv)
    row = asyncio.run(measure(args.tasks, args.appends, args.fsync, args.contend))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
