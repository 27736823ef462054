"""Engine-level durable appends: `Engine.submit(AppendBlock)` in-process, no socket.

`log.fsync = "always"`: every acknowledged append is in an fsynced batch. W writer tasks (1 and
64) each append blocks (10-60 words) to their own conversation's root context in a closed loop
for a fixed window; the rate counts acknowledged appends, the latency is submit → result.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from benchmarks.dataset import ACTOR, TextGen
from benchmarks.env import Env
from benchmarks.report import Target
from benchmarks.stats import median, summary_ms
from timelined import commands as cmd
from timelined.config import LogConfig, default_config
from timelined.writer.engine import Engine

PART = "engine"
WRITERS = (1, 64)


async def _window(engine: Engine, contexts: list[str], texts: list[str], window: float) -> Any:
    lat: list[float] = []
    done = 0
    clock = time.perf_counter
    end = clock() + window

    async def writer(ctx: str, offset: int) -> None:
        nonlocal done
        i = offset
        while clock() < end:
            command = cmd.AppendBlock(context_id=ctx, role="user", content=texts[i % len(texts)])
            i += 7
            t = clock()
            await engine.submit(command, ACTOR)
            lat.append(clock() - t)
            done += 1

    start = clock()
    async with anyio.create_task_group() as tg:
        for n, ctx in enumerate(contexts):
            tg.start_soon(writer, ctx, n)
    elapsed = clock() - start
    return done / elapsed, lat, engine.stats.batches


async def _measure(env: Env, writers: int) -> dict[str, Any]:
    config = default_config(env.scratch(f"eng{writers}"), log=LogConfig(fsync="always"))
    gen = TextGen()
    texts = [gen.text() for _ in range(512)]
    async with Engine.open(config) as engine:
        contexts = []
        for i in range(writers):
            conv = await engine.submit(cmd.CreateConversation(name=f"bench {i}"), ACTOR)
            contexts.append(conv.root_context_id)  # type: ignore[union-attr]
        await _window(engine, contexts, texts, min(0.3, env.window_s))  # warm-up
        runs = []
        for _ in range(env.repeats):
            batches_before = engine.stats.batches
            events_before = engine.stats.events
            rate, lat, batches = await _window(engine, contexts, texts, env.window_s)
            runs.append(
                {
                    "rate": rate,
                    **summary_ms(lat),
                    "mean_batch": (engine.stats.events - events_before)
                    / max(1, batches - batches_before),
                }
            )
    return {"runs": runs}


def _ceiling_note(env: Env, rate: float, writers: int) -> str:
    """The 64-writer rate against what the state database alone can take (raw part)."""
    ceiling = env.limit("state_blocks64_rate")
    if writers != 64 or not ceiling > 0:
        return ""
    return f"; {rate / ceiling:.2f}x the state schema's own SQL ceiling ({ceiling:,.0f} blocks/s)"


def run(env: Env) -> None:
    res = env.results
    for writers in WRITERS:
        out = anyio.run(_measure, env, writers)
        runs = out["runs"]
        rate = median([r["rate"] for r in runs])
        mid = sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2]
        ref = (
            ("jsonl_batch64_rate", "raw 1 fsync/64")
            if writers > 1
            else (
                "jsonl_fsync_rate",
                "raw fsync/record",
            )
        )
        res.add(
            PART,
            f"{writers} writer{'s' if writers > 1 else ''}: durable appends/s",
            rate,
            "appends/s",
            target=Target(">=", 30_000, "issue 2") if writers == 64 else None,
            ratio_to=(ref[1], env.limit(ref[0])),
            detail={"runs": runs},
            note=f"p50 {mid['p50_ms']:.2f} ms, p99 {mid['p99_ms']:.2f} ms, "
            f"mean batch {mid['mean_batch']:.1f}" + _ceiling_note(env, rate, writers),
        )
