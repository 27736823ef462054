"""Full verification throughput, and what a running verification costs the writers.

- events/s of a full verification (chain check + state check) of the cached 1M-event history:
  through the running daemon (`Admin.Verify(wait=true)`) and offline (`timelined verify
  --state-dir DIR --json`, a stopped daemon's directory, process start included). If the
  verifier is not in this build, the building blocks it stands on are measured instead and
  labelled so: `auditlog.walk_chain` over the log plus `state.replay.rebuild` into a scratch
  database.
- append p99 with 8 connections appending (closed loop), without a verification and while one
  runs (`Admin.Verify(wait=false)` right before the window); target: at most 1.5x the p99
  without.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.dataset import dataset
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.report import Target
from benchmarks.stats import median
from benchmarks.wire import ADMIN, VarlinkError, WireClient
from timelined.auditlog.scan import walk_chain
from timelined.state.replay import rebuild

PART = "verify"
CONNS = 8


def verifier_available() -> bool:
    return importlib.util.find_spec("timelined.verifier.offline") is not None


def _proxy(env: Env, n: int) -> None:
    ds = dataset(env.cache, n)
    runs = []
    for _ in range(1 if n >= 1_000_000 else env.repeats):
        scratch = env.scratch("vproxy")
        t = time.perf_counter()
        chain = walk_chain(ds.log_dir)
        t_chain = time.perf_counter() - t
        t = time.perf_counter()
        rebuild(ds.log_dir, scratch / "replay.db")
        t_replay = time.perf_counter() - t
        runs.append((t_chain, t_replay))
        assert chain.damage is None
    t_chain, t_replay = sorted(runs, key=lambda r: r[0] + r[1])[(len(runs) - 1) // 2]
    env.results.add(
        PART,
        f"full verification (PROXY: chain walk + replay), {env.label(n)} events",
        n / (t_chain + t_replay),
        "events/s",
        target=Target(">=", 100_000, "issue 5"),
        note=f"the verifier is not in this build; chain walk {n / t_chain:,.0f} events/s, "
        f"replay {n / t_replay:,.0f} events/s (the comparison pass is not counted)",
    )


def _offline(env: Env, n: int) -> None:
    ds = dataset(env.cache, n)
    times = []
    out: dict[str, Any] = {}
    for _ in range(1 if n >= 1_000_000 else env.repeats):
        config = write_config(env.scratch("voff"))
        ds.install(config, clean=True)
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "timelined",
                "verify",
                "--state-dir",
                str(config.state_dir),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        times.append(time.perf_counter() - t)
        out = {"exit": proc.returncode, "stderr": proc.stderr[-500:]}
    env.results.add(
        PART,
        f"full verification, offline CLI, {env.label(n)} events",
        n / median(times),
        "events/s",
        target=Target(">=", 100_000, "issue 5"),
        detail={"seconds": times, **out},
        note=f"{median(times):.1f} s including start-up; exit {out.get('exit')}",
    )


def _verify_call(daemon: Daemon, wait: bool) -> dict[str, Any]:
    with WireClient(daemon.socket_path, timeout=3600) as c:  # a full run at 1M takes a while
        return c.call(f"{ADMIN}.Verify", {"wait": wait})


def _online(env: Env, n: int) -> None:
    res = env.results
    ds = dataset(env.cache, n)
    config = write_config(env.scratch("von"))
    ds.install(config, clean=True)
    with Daemon(config) as daemon:
        daemon.start()
        # Throughput of a full run inside the daemon.
        t = time.perf_counter()
        try:
            reply = _verify_call(daemon, True)
        except VarlinkError as exc:
            res.add(PART, "full verification in the daemon", None, "events/s", note=str(exc))
            reply = None
        seconds = time.perf_counter() - t
        if reply is not None:
            res.add(
                PART,
                f"full verification in the daemon (Verify wait=true), {env.label(n)} events",
                n / seconds,
                "events/s",
                target=Target(">=", 100_000, "issue 5"),
                detail={"seconds": seconds, "reply": reply},
                note=f"{seconds:.2f} s for the call; the verifier's own report: {_own_rate(reply)}",
            )
        # Append latency without, then during, a verification.
        window = env.window_s
        quiet = Load(str(daemon.socket_path), CONNS, window, repeats=env.repeats).run()
        p99_quiet = median([r["p99_ms"] for r in quiet])
        # One verification spans the windows (at 1M events it runs far longer than they do).
        load = Load(str(daemon.socket_path), CONNS, window, repeats=env.repeats, warmup=0.2)
        _verify_call(daemon, False)
        load.go()
        time.sleep(window / 2)
        states = [str((daemon.status().get("verify") or {}).get("state"))]
        during = load.results()
        states.append(str((daemon.status().get("verify") or {}).get("state")))
        _wait_idle(daemon)
        p99_during = median([r["p99_ms"] for r in during])
        res.add(
            PART,
            f"append p99, {CONNS} conns, no verification running",
            p99_quiet,
            "ms",
            detail={"runs": quiet},
            note=f"{median([r['rate'] for r in quiet]):,.0f} appends/s",
        )
        res.add(
            PART,
            f"append p99, {CONNS} conns, during a full verification",
            p99_during,
            "ms",
            target=Target("<=", 1.5 * p99_quiet, "1.5x the p99 without, issue 5"),
            ratio_to=("p99 without", p99_quiet),
            detail={"runs": during, "verify_state_mid_window": states},
            note=f"{median([r['rate'] for r in during]):,.0f} appends/s; verifier state "
            f"in the first window / after the last: {' / '.join(states)}",
        )
        daemon.stop()


def _own_rate(reply: dict[str, Any]) -> str:
    result = reply.get("result") or {}
    chain = result.get("chain") or {}
    parts = [f"{result.get('events_per_second', 0):,.0f} events/s"]
    if chain.get("seconds"):
        parts.append(f"chain check {chain['seconds']:.2f} s")
    parts.append(f"state {result.get('state')}")
    return ", ".join(parts)


def _wait_idle(daemon: Daemon, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (daemon.status().get("verify") or {}).get("state") != "running":
            return
        time.sleep(0.2)


def run(env: Env) -> None:
    n = env.verify_events or env.big
    if not verifier_available():
        _proxy(env, n)
        env.results.add(
            PART,
            "append p99 during a verification",
            None,
            "ms",
            note="not measured: the verifier (timelined/verifier) is not in this build",
        )
        return
    _online(env, n)
    _offline(env, n)
