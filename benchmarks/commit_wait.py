"""How long a read waits for the COMMIT of the events open in the writer's transaction.

`python benchmarks/commit_wait.py [--dir DIR]`: in process (no socket, fsync "off", the delays
and bounds stretched so that nothing commits by itself), 256 and then 1,024 AppendBlock calls
are answered and left open, and `Engine.caught_up()` (what a read does first) is timed; five
times each. The state lives under DIR (default `./var/commit_wait`: the disk `make run` uses).
The worst wait a read can meet under load is the COMMIT of a full transaction: COMMIT_MAX_EVENTS
or COMMIT_MAX_APPENDS events (docs/performance.md, "A transaction of AppendBlock batches commits
at 1,024 events").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.config import LogConfig, default_config
from timelined.writer import engine as engine_module
from timelined.writer.batch import Pending
from timelined.writer.engine import Engine

TEXT = "x" * 400 + " a few words for the search index to take"
SIZES = (256, 1_024)
ROUNDS = 5


async def answered(pending: list[Pending]) -> None:
    """Until every call of `pending` is answered."""
    for p in pending:
        if not p.answered:
            done = asyncio.Event()
            p.add_done_callback(done.set)
            await done.wait()


async def measure(directory: Path) -> None:
    engine_module.COMMIT_DELAY_S = engine_module.INDEX_DELAY_S = 3600.0
    engine_module.COMMIT_MAX_APPENDS = engine_module.COMMIT_MAX_EVENTS = 100_000
    waits: dict[int, list[float]] = {n: [] for n in SIZES}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        config = default_config(Path(tmp) / "state", log=LogConfig(fsync="off"))
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="bench"))
            assert isinstance(conv, Conversation)
            append = cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=TEXT)
            for n in SIZES * ROUNDS:
                await engine.caught_up()
                pending = [engine.enqueue(append) for _ in range(n)]
                await answered(pending)
                start = time.perf_counter()
                await engine.caught_up()
                waits[n].append((time.perf_counter() - start) * 1000)
    for n, ms in waits.items():
        print(
            f"{n:>5} events open: the read waits {statistics.median(ms):.2f} ms (median of "
            f"{len(ms)}: {', '.join(f'{x:.2f}' for x in ms)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("var/commit_wait"))
    directory = parser.parse_args().dir
    directory.mkdir(parents=True, exist_ok=True)
    asyncio.run(measure(directory))


if __name__ == "__main__":
    main()
