"""The verifier on PostgreSQL (issue 20): `timelined migrate` and a full verification of a
PostgreSQL store, in events/s, beside the SQLite store's offline verification of the same
history in the same run.

- migrate: a stopped daemon's state directory (the cached history) into an empty database of a
  real server (tests/pgserver.py, fsync on), one transaction, the target verified before its
  COMMIT (`timelined.migrate.migrate_to_pg`);
- verify: `pgrun.verify_pg` on the migrated store (the run `timelined verify --dsn` and the
  daemon's child make), in this process;
- the same history's SQLite verification (`runner.verify_paths`, offline, in this process).

The default history is 100k events (a full run's 1M would take a migration of minutes per
repeat); `--verify-events` sets it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.daemon import write_config
from benchmarks.dataset import dataset
from benchmarks.env import Env
from benchmarks.stats import median
from tests.pgserver import EmbeddedPostgres
from timelined.migrate import migrate_to_pg
from timelined.pgstore.sql import PgConnection, connect
from timelined.verifier.pgrun import verify_pg
from timelined.verifier.runner import Paths, verify_paths

PART = "pgverify"


def _connector(dsn: str) -> Callable[[], PgConnection]:
    return lambda: connect(dsn)


def run(env: Env) -> None:
    n = env.verify_events or (env.big if env.quick else 100_000)
    ds = dataset(env.cache, n)
    migrate_s: list[float] = []
    verify_s: list[float] = []
    sqlite_s: list[float] = []
    with EmbeddedPostgres(fsync=True) as server:
        for _ in range(env.repeats):
            config = write_config(env.scratch("pgv"))
            ds.install(config, clean=True)
            dsn = server.conninfo(server.create_database())
            t = time.perf_counter()
            result = migrate_to_pg(config.state_dir, _connector(dsn), "bench")
            migrate_s.append(time.perf_counter() - t)
            assert result.events == n, result
            t = time.perf_counter()
            report = verify_pg(
                _connector(dsn), env.scratch("pgvw"), trigger="bench", mode="offline"
            )
            verify_s.append(time.perf_counter() - t)
            assert report.state == "ok", report.summary
            t = time.perf_counter()
            sqlite = verify_paths(
                Paths.of(config.state_dir, env.scratch("pgvs")),
                trigger="bench",
                mode="offline",
                copy=True,
                processes=False,
            )
            sqlite_s.append(time.perf_counter() - t)
            assert sqlite.state == "ok", sqlite.summary
    label = env.label(n)
    env.results.add(
        PART,
        f"timelined migrate to PostgreSQL (verified before COMMIT), {label} events",
        n / median(migrate_s),
        "events/s",
        detail={"seconds": migrate_s},
        note=f"{median(migrate_s):.2f} s: chain walk, copy + apply, chain and state check",
    )
    env.results.add(
        PART,
        f"full verification of a PostgreSQL store (in-process), {label} events",
        n / median(verify_s),
        "events/s",
        detail={"seconds": verify_s},
        note=f"{median(verify_s):.2f} s",
    )
    env.results.add(
        PART,
        f"full verification of the same history on SQLite (in-process), {label} events",
        n / median(sqlite_s),
        "events/s",
        detail={"seconds": sqlite_s},
        note=f"{median(sqlite_s):.2f} s, same run",
    )
