"""Time to READY at 10k, 100k and 1M events: after a clean stop, and after kill -9.

READY is the daemon's own `READY=1` sd_notify datagram, timed from just before the process is
spawned (interpreter start-up and imports included: that is what systemd waits for).

- clean: the history is laid out as a stopped daemon leaves it (marker written); then the
  daemon is started, stopped with SIGTERM and started again (each start after a clean stop).
  DESIGN's fast path must make this flat in the history's size.
- unclean, tail 0: the daemon is killed with SIGKILL right after READY and restarted: the state
  already holds every event, so recovery checks the state (`PRAGMA quick_check`) and scans the
  log from the state's last seq.
- unclean, tail T (10k): the state database is the one of T events before the end of the log, no
  marker: recovery rolls T events forward.

Each boot's own report (STATE_DIR/reports) gives the time per phase, kept in the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.dataset import dataset
from benchmarks.env import Env
from benchmarks.report import Target
from benchmarks.stats import median

PART = "boot"


def last_boot_report(state_dir: Path) -> dict[str, Any]:
    reports = sorted(
        (state_dir / "reports").glob("boot-*.json"), key=lambda p: p.stat().st_mtime_ns
    )
    if not reports:
        return {}
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    return {
        "verdict": report.get("verdict"),
        "fast_path": report.get("fast_path"),
        "lines_scanned": report.get("lines_scanned"),
        "events_rolled_forward": report.get("events_rolled_forward"),
        "phases_ms": {p["name"]: round(p["seconds"] * 1000, 2) for p in report.get("phases", [])},
    }


def _boots(env: Env, n: int, scenario: str) -> tuple[list[float], list[dict[str, Any]]]:
    ds = dataset(env.cache, n, tail=env.tail)
    times: list[float] = []
    reports: list[dict[str, Any]] = []
    if scenario == "tail":
        for _ in range(env.repeats):
            config = write_config(env.scratch(f"boot{n}"))
            ds.install(config, clean=False, tail=env.tail)
            with Daemon(config) as d:
                times.append(d.start())
                d.stop()
            reports.append(last_boot_report(config.state_dir))
        return times, reports
    config = write_config(env.scratch(f"boot{n}"))
    ds.install(config, clean=scenario == "clean", tail=0)
    if scenario == "unclean":
        with Daemon(config) as d:  # the first boot is clean (no marker: fresh copy); kill it
            d.start()
            d.kill()
    for _ in range(env.repeats):
        with Daemon(config) as d:
            times.append(d.start())
            if scenario == "clean":
                d.stop()
            else:
                d.kill()
        reports.append(last_boot_report(config.state_dir))
    return times, reports


def run(env: Env) -> None:
    res = env.results
    config = write_config(env.scratch("fresh"))
    fresh = []
    for _ in range(env.repeats):
        with Daemon(config) as d:
            fresh.append(d.start())
            d.stop()
    base = median(fresh)
    res.add(PART, "READY, a fresh empty state dir (start-up floor)", base * 1000, "ms")
    data = res.part_data(PART)
    for scenario, what in (
        ("clean", "after a clean stop"),
        ("unclean", "after kill -9, tail 0"),
        ("tail", f"after kill -9, tail {env.label(env.tail)}"),
    ):
        for n in env.boot_sizes:
            times, reports = _boots(env, n, scenario)
            value = median(times) * 1000
            target = None
            if scenario == "clean" and n == env.boot_sizes[-1]:
                target = Target("<=", 500, f"issue 8, at {env.label(n)}")
            verdicts = sorted({str(r.get("verdict")) for r in reports})
            phases = reports[len(reports) // 2].get("phases_ms", {}) if reports else {}
            slow = sorted(phases.items(), key=lambda kv: -kv[1])[:3]
            res.add(
                PART,
                f"READY {what}, {env.label(n)} events",
                value,
                "ms",
                target=target,
                detail={"runs_ms": [t * 1000 for t in times], "reports": reports},
                note=f"verdict {'/'.join(verdicts)}; slowest phases "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in slow),
            )
            data.setdefault("ready_ms", {}).setdefault(scenario, {})[str(n)] = value
