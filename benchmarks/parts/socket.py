"""Durable appends through the socket: the real daemon, clients in another process.

A daemon (`log.fsync = "always"`, verifier off so that it does not compete) serves a fresh state
directory; a load-generator process (`benchmarks.loadgen`) opens 1, 8 and 64 connections, each
appending blocks to its own conversation in a closed loop (one call in flight per connection).
Figures: acknowledged appends/s, and p50/p99/max latency from sending the call to the reply,
as ratios of the raw limits measured in the same run. The daemon's CPU use over the window is
recorded too, split into the event loop's thread and the writer's (their sum near one core means
the daemon is bound by the GIL they share), with the mean commands per group commit, and the CPU
the daemon and the load generator spend per append between them (the machine's cores bound the
rate by it). At 64 connections the rate is also read against the raw part's do-nothing server:
the round trips per second the same load generator gets from a server that does no work.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.procstat import cpu_seconds, thread_cpu_seconds
from benchmarks.report import Target
from benchmarks.stats import median
from timelined.client import Client

PART = "socket"
CONNS = (1, 8, 64)


def batch_counts(socket_path: str) -> tuple[float, float]:
    """The daemon's (batches, commands in batches) so far, from its metrics."""
    found = {"timelined_batch_size_count": 0.0, "timelined_batch_size_sum": 0.0}
    with Client(socket_path) as client:
        text = client.get_metrics()
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found["timelined_batch_size_count"], found["timelined_batch_size_sum"]


def measure(daemon: Daemon, conns: int, env: Env, window: float | None = None) -> dict[str, Any]:
    """Median run of `repeats` windows of `conns` connections appending.

    Besides the rate and latency: the daemon's CPU over the windows (1.0 = one core), split into
    its main thread (the event loop: Varlink framing, decoding, replies) and its busiest other
    thread (the writer: rules, SQLite, the log), and the mean commands per group commit. The two
    threads share one GIL: their sum near 1.0 means the daemon is bound by it. Also the load
    generator's CPU, and the CPU both processes spend per acknowledged append: the machine's
    cores divided by that is the most appends/s this client and this daemon could reach here.
    """
    load = Load(str(daemon.socket_path), conns, window or env.window_s, repeats=env.repeats)
    batches0, commands0 = batch_counts(str(daemon.socket_path))
    threads0 = thread_cpu_seconds(daemon.pid)
    cpu0, t0 = cpu_seconds(daemon.pid), time.perf_counter()
    runs = load.run()
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(daemon.pid) - cpu0) / wall
    threads1 = thread_cpu_seconds(daemon.pid)
    batches1, commands1 = batch_counts(str(daemon.socket_path))
    used = {tid: (t - threads0.get(tid, 0.0)) / wall for tid, t in threads1.items()}
    loop_cpu = used.pop(daemon.pid, 0.0)
    used_max = max(used.values(), default=0.0)
    mid = sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2]
    rate = median([r["rate"] for r in runs])
    return {
        "rate": rate,
        "p50_ms": mid["p50_ms"],
        "p99_ms": mid["p99_ms"],
        "max_ms": mid["max_ms"],
        "daemon_cpu": cpu,
        "loop_cpu": loop_cpu,
        "writer_cpu": used_max,
        "mean_batch": (commands1 - commands0) / max(1.0, batches1 - batches0),
        "load_cpu": mid["cpu"],
        # The writer's thread alone: with a core of its own (a writer process) the daemon could
        # not go faster than one core divided by this.
        "writer_us_per_append": used_max / rate * 1e6 if rate > 0 else float("nan"),
        # Both processes' CPU for one acknowledged append: on a machine of N cores, R appends/s
        # need this below N / R seconds, however the work is split between threads or processes.
        "cpu_us_per_append": (cpu + mid["cpu"]) / rate * 1e6 if rate > 0 else float("nan"),
        "errors": {k: v for r in runs for k, v in r["errors"].items()},
        "runs": runs,
    }


def run(env: Env) -> None:
    res = env.results
    fsync_p50 = env.limit("jsonl_fsync_p50_ms")
    batch_rate = env.limit("jsonl_batch64_rate")
    fsync_rate = env.limit("jsonl_fsync_rate")
    cores = os.cpu_count() or 1
    config = write_config(env.scratch("sock"))
    with Daemon(config) as daemon:
        daemon.start()
        for conns in CONNS:
            m = measure(daemon, conns, env)
            label = f"{conns} conn{'s' if conns > 1 else ''}"
            note = (
                f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, max {m['max_ms']:.1f} ms; "
                f"daemon CPU {m['daemon_cpu']:.2f} (loop {m['loop_cpu']:.2f}, "
                f"writer {m['writer_cpu']:.2f}); mean batch {m['mean_batch']:.1f}; "
                f"load generator CPU {m['load_cpu']:.2f}; "
                f"{m['cpu_us_per_append']:.0f} µs of CPU per append in both"
            )
            if conns == 64 and m["writer_us_per_append"] > 0:
                note += (
                    f" ({cores} cores allow {cores / 20_000 * 1e6:.0f} µs at 20,000/s); "
                    f"the writer's thread {m['writer_us_per_append']:.0f} µs per append "
                    f"(a core of its own: at most {1e6 / m['writer_us_per_append']:,.0f}/s)"
                )
            if m["errors"]:
                note += f"; errors {m['errors']}"
            res.add(
                PART,
                f"{label}: durable appends/s",
                m["rate"],
                "appends/s",
                target=Target(">=", 20_000, "issue 3/8") if conns == 64 else None,
                ratio_to=("raw 1 fsync/64", batch_rate)
                if conns > 1
                else ("raw fsync/record", fsync_rate),
                detail=m,
                note=note,
            )
            if conns == 1:
                res.add(
                    PART,
                    "1 conn: p50 latency",
                    m["p50_ms"],
                    "ms",
                    target=Target(
                        "<=", fsync_p50 + 0.3, f"raw fsync p50 {fsync_p50:.3f} ms + 0.3 ms"
                    ),
                    ratio_to=("raw fsync p50", fsync_p50),
                )
            if conns == 64:
                echo = env.limit("echo64_rate")
                res.add(
                    PART,
                    "64 conns: share of the do-nothing server's round trips",
                    m["rate"] / echo * 100 if echo > 0 else None,
                    "%",
                    note=f"raw: {echo:,.0f} round trips/s with 64 connections",
                )
                res.add(
                    PART,
                    "64 conns: share of the raw 1-fsync-per-64 JSONL rate",
                    m["rate"] / batch_rate * 100 if batch_rate > 0 else None,
                    "%",
                    target=Target(">=", 60, "issue 8"),
                )
            for key in ("p99_ms", "max_ms"):
                res.add(PART, f"{label}: {key[:-3]} latency", m[key], "ms", quiet=True)
        daemon.stop()
