"""What `import timelined.client` costs a program that only talks to the daemon.

Each figure is the median of fresh interpreters (`sys.executable`):
- wall clock of `python -c "import timelined.client"` minus that of `python -c pass` (the
  interpreter's own start-up), its ratio to that start-up beside it;
- the cumulative time `python -X importtime` reports for `timelined.client`, with the number of
  modules the import brings in (and which of the server's, if any: tests/client/test_import.py
  keeps that list from growing);
- the CPU the client library spends per call: a real daemon (as in the socket part) appended to by
  64 tasks sharing one `AsyncClient` (which pipelines them on one connection), against the socket
  part's raw load generator (64 connections, pre-encoded calls) on the same daemon, windows
  interleaved. Issue 17: no more than 1.5x the raw generator's.
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.daemon import Daemon, write_config
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.report import Target
from benchmarks.stats import median

PART = "client"
MODULE = "timelined.client"
SERVER_SIDE = ("timelined.writer", "timelined.state", "timelined.auditlog.writer", "sqlite3")


def _wall_s(statement: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - t0


def _importtime() -> tuple[float, list[str]]:
    """`timelined.client`'s cumulative import time (s) and every module imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {MODULE}"],
        capture_output=True,
        text=True,
        check=True,
    )
    cumulative = float("nan")
    modules: list[str] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _self, cumulative_us, name = (part.strip() for part in line.split("|"))
        modules.append(name)
        if name == MODULE:
            cumulative = int(cumulative_us) / 1e6
    return cumulative, modules


CLIENT_TASKS = 64


def _cpu_per_call_us(socket_path: str, env: Env, client: bool) -> tuple[float, float]:
    """(µs of the load process's CPU per acknowledged call, calls/s): the median window."""
    runs = Load(socket_path, CLIENT_TASKS, env.window_s, repeats=env.repeats, client=client).run()
    mid = sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2]
    if mid["errors"]:
        raise RuntimeError(f"the load got errors: {mid['errors']}")
    return mid["cpu"] / mid["rate"] * 1e6, mid["rate"]


def _client_cpu(env: Env) -> None:
    with Daemon(write_config(env.scratch("client"))) as daemon:
        daemon.start()
        raw: list[float] = []
        lib: list[float] = []
        rates: list[float] = []
        # Interleaved pairs, so that a load change touches both. Three, not two: the generator's
        # CPU per call moved from 12 to 31 µs between two measurements of one run (its 64
        # connections wake it once per reply batch of the daemon, whose size varies), the
        # client's (one pipelined connection) by a few µs.
        for _ in range(1 if env.quick else 3):
            raw.append(_cpu_per_call_us(str(daemon.socket_path), env, client=False)[0])
            us, rate = _cpu_per_call_us(str(daemon.socket_path), env, client=True)
            lib.append(us)
            rates.append(rate)
        daemon.stop()
    generator = median(raw)
    env.results.add(
        PART,
        f"AsyncClient CPU per call, {CLIENT_TASKS} concurrent tasks (AppendBlock)",
        median(lib),
        "µs",
        target=Target("<=", 1.5 * generator, f"1.5x the raw load generator's {generator:.0f} µs"),
        ratio_to=("raw load generator, 64 conns", generator),
        detail={
            "client_us": lib,
            "generator_us": raw,
            "pair_ratios": [round(c / g, 2) for c, g in zip(lib, raw, strict=True) if g > 0],
            "client_rates": rates,
        },
        note=f"{median(rates):,.0f} calls/s through the client",
    )


def run(env: Env) -> None:
    _client_cpu(env)
    rounds = 3 if env.quick else 15
    bare: list[float] = []
    loaded: list[float] = []
    for _ in range(rounds):  # interleaved, so that a load change touches both alike
        bare.append(_wall_s("pass"))
        loaded.append(_wall_s(f"import {MODULE}"))
    startup = median(bare)
    net = max(median(loaded) - startup, 0.0)
    env.results.add(
        PART,
        f"import {MODULE} (wall, net of start-up)",
        net * 1000,
        "ms",
        ratio_to=("interpreter start-up", startup * 1000),
        detail={"rounds": rounds, "startup_ms": round(startup * 1000, 2)},
    )
    runs = [_importtime() for _ in range(rounds)]
    modules = runs[-1][1]
    server_side = sorted(m for m in modules if m.startswith(SERVER_SIDE))
    env.results.add(
        PART,
        f"import {MODULE} (-X importtime, cumulative)",
        median([r[0] for r in runs]) * 1000,
        "ms",
        detail={"modules": len(modules), "server_side_modules": server_side},
        note=f"{len(modules)} modules, {len(server_side)} of them the server's",
    )
