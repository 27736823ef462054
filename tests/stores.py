"""The two storage backends as the contract suite sees them (the eventsourcing style: ONE suite,
each test run once per backend through the `store` fixture of tests/conftest.py).

A `Store` is where one daemon (or several, on PostgreSQL) keeps its log and state:
- `overrides()` are the config sections for `serving(**...)` / `DaemonProcess(base, **...)`;
- `log_dir(state_dir, scratch)` is the log as JSONL segments: the file log itself on SQLite; on
  PostgreSQL the log table's lines (each the exact line the file log would hold) written into one
  segment, so that the file-format tools (`walk_chain`, `rebuild`) check it unchanged;
- `dump(state_dir)` is every row of every entity table (tests/helpers.dump_state) read from the
  backend's own state tables;
- `query(sql, state_dir)` reads and `execute(sql, state_dir)` changes the state behind the
  daemon's back (the drift tests), as another program would.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers import dump_state, replay_dump
from timelined.auditlog.scan import ChainReport, walk_chain
from timelined.auditlog.segments import segment_name
from timelined.config import Config, StoreConfig, load_config
from timelined.daemon.lifecycle import engine_class
from timelined.writer.engine import Engine

if TYPE_CHECKING:
    from timelined.pgstore.sql import PgConnection

BACKENDS = ("sqlite", "postgresql")

Dump = dict[str, list[tuple[object, ...]]]


@dataclass
class Store:
    backend: str
    dsn: str | None = None  # postgresql: the libpq conninfo of this store's database
    dbname: str | None = None
    # One connection for this test's reads behind the daemon's back (a test that checks the
    # state after every step would otherwise pay a connection per check); `close()` ends it.
    _pg: PgConnection | None = field(default=None, repr=False, compare=False)

    def pg(self) -> PgConnection:
        from timelined.pgstore.sql import connect

        if self._pg is None:
            self._pg = connect(self.dsn or "")
        return self._pg

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    @property
    def shared(self) -> bool:
        """Several daemons may serve this store at once (one per app server)."""
        return self.backend == "postgresql"

    def store_config(self) -> StoreConfig:
        """`[store]` as a config section, for `inprocess_config(base, store=...)`."""
        if self.backend == "sqlite":
            return StoreConfig()
        return StoreConfig(backend="postgresql", dsn=self.dsn or "")

    def overrides(self) -> dict[str, dict[str, Any]]:
        """`[store]` for the harness: `serving(**store.overrides(), log=...)`. SQLite is the
        default: its daemons get no `[store]` section, as a config written before it had one."""
        if self.backend == "sqlite":
            return {}
        assert self.dsn is not None
        return {"store": {"backend": "postgresql", "dsn": self.dsn}}

    # --- reading what the daemons wrote -------------------------------------------------------

    def log_lines(self, state_dir: Path) -> list[bytes]:
        if self.backend == "sqlite":
            # Whole lines only: a running daemon's last segment ends in the space its writer
            # reserved ahead (NULs, no newline; docs/log-format.md "Files").
            return [
                line
                for path in sorted((state_dir / "log").glob("*.jsonl"))
                for line in path.read_bytes().splitlines(keepends=True)
                if line.endswith(b"\n")
            ]
        rows = self.query("SELECT line FROM log ORDER BY seq")
        return [bytes(row[0]) for row in rows]

    def log_dir(self, state_dir: Path, scratch: Path) -> Path:
        """The log as JSONL segments (see the module's docstring)."""
        if self.backend == "sqlite":
            return state_dir / "log"
        out = scratch / "exported-log"
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            old.unlink()
        lines = self.log_lines(state_dir)
        if lines:
            (out / segment_name(1)).write_bytes(b"".join(lines))
        return out

    def chain(self, state_dir: Path, scratch: Path) -> ChainReport:
        return walk_chain(self.log_dir(state_dir, scratch))

    def replay(self, state_dir: Path, scratch: Path) -> Dump:
        """The dump of a fresh replay of the log."""
        return replay_dump(self.log_dir(state_dir, scratch), scratch / "replay.db")

    def dump(self, state_dir: Path) -> Dump:
        if self.backend == "sqlite":
            return dump_state(state_dir / "state.db")
        return dump_state(self.pg())

    # --- direct access (behind the daemon's back) ---------------------------------------------

    def query(self, sql: str, state_dir: Path | None = None) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            assert state_dir is not None
            conn = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        return list(self.pg().execute(sql).fetchall())

    def execute(self, sql: str, state_dir: Path | None = None) -> None:
        """Statements by another program (the sqlite3 CLI; another PostgreSQL session)."""
        if self.backend == "sqlite":
            assert state_dir is not None
            subprocess.run(  # waits for the engine's write lock, as an operator's tool would
                ["sqlite3", "-cmd", ".timeout 5000", str(state_dir / "state.db"), sql],
                check=True,
                capture_output=True,
                timeout=30,
            )
            return
        import psycopg

        with psycopg.connect(self.dsn or "", autocommit=True) as session:
            session.execute(sql.encode())  # bytes: no placeholders, several statements

    def config(self, base: Path, **sections: dict[str, Any]) -> Config:
        """A loaded config for an in-process Engine on this store, state under `base`."""
        from tests.daemon.harness import config_text

        text = config_text({"daemon": {"state_dir": str(base / "state")}, **self.overrides()})
        path = base / "config.toml"
        extra = config_text(sections)
        path.write_text(text + extra, encoding="utf-8")
        return load_config(path)


def open_engine(config: Config) -> AbstractAsyncContextManager[Engine]:
    """The engine of `config`'s backend, as the daemon opens it (a fresh store boots alone)."""
    return engine_class(config).open(config)


def stress_seconds(default: float) -> float:
    """TIMELINED_PG_STRESS_SECONDS (`make stress PG_SECONDS=N`), else `default`."""
    try:
        return max(1.0, float(os.environ.get("TIMELINED_PG_STRESS_SECONDS", default)))
    except ValueError:
        return default
