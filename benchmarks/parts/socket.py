"""Durable appends through the socket: the real daemon, clients in another process.

A daemon (`log.fsync = "always"`, verifier off so that it does not compete) serves a fresh state
directory; a load-generator process (`benchmarks.loadgen`) opens 1, 8 and 64 connections, each
appending blocks to its own conversation in a closed loop (one call in flight per connection).
Figures: acknowledged appends/s, and p50/p99/max latency from sending the call to the reply,
as ratios of the raw limits measured in the same run. The daemon's CPU use over the window is
recorded too (a figure near 100 % of one core means the daemon's Python is the bottleneck).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.report import Target
from benchmarks.stats import median

PART = "socket"
CONNS = (1, 8, 64)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def measure(daemon: Daemon, conns: int, env: Env, window: float | None = None) -> dict[str, Any]:
    """Median run of `repeats` windows of `conns` connections appending."""
    load = Load(str(daemon.socket_path), conns, window or env.window_s, repeats=env.repeats)
    cpu0, t0 = cpu_seconds(daemon.pid), time.perf_counter()
    runs = load.run()
    cpu = (cpu_seconds(daemon.pid) - cpu0) / (time.perf_counter() - t0)
    mid = sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2]
    return {
        "rate": median([r["rate"] for r in runs]),
        "p50_ms": mid["p50_ms"],
        "p99_ms": mid["p99_ms"],
        "max_ms": mid["max_ms"],
        "daemon_cpu": cpu,
        "errors": {k: v for r in runs for k, v in r["errors"].items()},
        "runs": runs,
    }


def run(env: Env) -> None:
    res = env.results
    fsync_p50 = env.limit("jsonl_fsync_p50_ms")
    batch_rate = env.limit("jsonl_batch64_rate")
    fsync_rate = env.limit("jsonl_fsync_rate")
    config = write_config(env.scratch("sock"))
    with Daemon(config) as daemon:
        daemon.start()
        for conns in CONNS:
            m = measure(daemon, conns, env)
            label = f"{conns} conn{'s' if conns > 1 else ''}"
            note = (
                f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, max {m['max_ms']:.1f} ms; "
                f"daemon CPU {m['daemon_cpu'] * 100:.0f} %"
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
