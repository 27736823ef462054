"""One verification run on PostgreSQL: the state check, the chain over the log table, then the
daemon's local Merkle tree against the log table.

The entry point of the daemon's background verification on PostgreSQL (scheduler.Verifier with
`pg=`), of `timelined verify --dsn` and of `timelined migrate`'s last check. Blocking: a worker
thread of the daemon runs it. Both checks read through their own connection: the state check
takes its snapshot first, then the chain is walked to the table's last row, so it covers every
row the snapshot saw (the table only grows). The tree (each daemon keeps its own, in its state
directory) is checked after the chain, through `TableLogSource` on the same connection, as the
file run checks it against the segments (verifier/tree.py).

The report is the file verifier's (runner.build_report): the same verdicts, differences and
summary. On PostgreSQL the state's `meta.last_seq` past the log table's head of the same
snapshot can only be a changed meta row (log and state commit in one transaction): drift,
noted as the daemon's "changed behind the daemon's back".
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from timelined.api.verify import ChainResult, Mode, TreeResult, VerifyProgress, VerifyReport
from timelined.errors import ConfigError
from timelined.ids import utc_now
from timelined.pgstore.chain import check_table_chain
from timelined.state.dbapi import DbConn
from timelined.verifier.model import MAX_DIFFERENCES, StateResult
from timelined.verifier.pgstate import check_pg_state
from timelined.verifier.runner import Cancelled, build_report
from timelined.verifier.tree import check_tree

if TYPE_CHECKING:
    from timelined.pgstore.sql import PgConnection

Connect = Callable[[], DbConn]
ProgressFn = Callable[[VerifyProgress], None]
DSN_ENV = "TIMELINED_PG_DSN"  # a verifier child's store (worker.py); its password: PGPASSWORD


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A PostgreSQL store as the daemon's verifier reaches it: its dsn (no password in it)
    and the password read from `[store] password_file`, if any."""

    dsn: str
    password: str | None = field(default=None, repr=False)

    def connect(self) -> PgConnection:
        from timelined.pgstore.sql import connect

        return connect(self.dsn, self.password)

    def child_env(self) -> dict[str, str]:
        """The environment a verifier child reaches the store with: never its command line,
        which every user may read (ps); the password as libpq's own PGPASSWORD."""
        env = {DSN_ENV: self.dsn}
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


def verify_pg(
    connect: Connect,
    work_dir: Path,
    *,
    trigger: str,
    mode: Mode = "daemon",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    cap: int = MAX_DIFFERENCES,
    tree_dir: Path | None = None,
    tree_size: int | None = None,
) -> VerifyReport:
    """Verify the PostgreSQL store `connect()` reaches, and the Merkle tree in `tree_dir` (a
    daemon's: up to `tree_size` leaves, its size when the run began) against its log table;
    the report is not written (see reports.write_report). Raises runner.Cancelled when `cancel`
    is set (checked at every step of progress)."""
    started_at = utc_now()
    started = time.perf_counter()
    try:
        conn = connect()
    except (sqlite3.Error, OSError) as exc:
        return _report(started_at, started, trigger, mode, None, None, [f"cannot connect: {exc}"])
    try:
        return verify_on(
            conn,
            work_dir,
            trigger=trigger,
            mode=mode,
            progress=_ticker(progress, cancel),
            cap=cap,
            tree_dir=tree_dir,
            tree_size=tree_size,
        )
    finally:
        conn.close()


def verify_on(
    conn: DbConn,
    work_dir: Path,
    *,
    trigger: str,
    mode: Mode,
    progress: ProgressFn | None = None,
    cap: int = MAX_DIFFERENCES,
    in_transaction: bool = False,
    upto_seq: int | None = None,
    tree_dir: Path | None = None,
    tree_size: int | None = None,
) -> VerifyReport:
    """The run on an open connection: the state check, then the chain (to `upto_seq`, or the
    table's last row), then the tree in `tree_dir` if one is given. `in_transaction`: inside
    the caller's transaction (a migration's)."""
    started_at = utc_now()
    started = time.perf_counter()
    tick = progress or (lambda _step: None)
    state: StateResult | None = None
    chain: ChainResult | None = None
    errors: list[str] = []
    try:
        state = check_pg_state(
            conn, work_dir, cap=cap, progress=tick, in_transaction=in_transaction
        )
    except (sqlite3.Error, OSError) as exc:
        errors.append(f"state check: {type(exc).__name__}: {exc}")
    head = upto_seq or ((state.log_head_seq or 0) if state is not None else 0)
    try:
        chain = check_table_chain(
            conn,
            upto_seq=upto_seq,
            progress=lambda seq, _bytes: tick(VerifyProgress("chain", seq, max(seq, head))),
        )
        tick(VerifyProgress("chain", chain.head_seq, max(chain.head_seq, head)))
    except (sqlite3.Error, OSError) as exc:
        errors.append(f"chain check: {type(exc).__name__}: {exc}")
    tree: TreeResult | None = None
    if tree_dir is not None and chain is not None:
        try:
            tree = _check_tree(conn, tree_dir, chain, tree_size)
        except (sqlite3.Error, OSError) as exc:
            errors.append(f"tree check: {type(exc).__name__}: {exc}")
    return _report(started_at, started, trigger, mode, state, chain, errors, tree)


def _check_tree(
    conn: DbConn, tree_dir: Path, chain: ChainResult, tree_size: int | None
) -> TreeResult:
    """The tree against the log table, read on the run's connection batch by batch."""
    from timelined.pgstore.logsource import TableLogSource
    from timelined.pgstore.sql import PgConnection

    assert isinstance(conn, PgConnection)
    source = TableLogSource(lambda: contextlib.nullcontext(conn))
    return check_tree(tree_dir, source, chain, tree_size)


def _report(
    started_at: str,
    started: float,
    trigger: str,
    mode: Mode,
    state: StateResult | None,
    chain: ChainResult | None,
    errors: list[str],
    tree: TreeResult | None = None,
) -> VerifyReport:
    return build_report(
        started_at=started_at,
        seconds=time.perf_counter() - started,
        trigger=trigger,
        mode=mode,
        state=state,
        chain=chain,
        tree=tree,
        error="; ".join(errors) or None,
        daemon_head=state.log_head_seq if state is not None else None,
        log_table=True,
    )


def _ticker(progress: ProgressFn | None, cancel: threading.Event | None) -> ProgressFn:
    """Progress that also stops the run once `cancel` is set (the daemon is stopping)."""

    def tick(step: VerifyProgress) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if progress is not None:
            progress(step)

    return tick


def pg_connector(
    dsn: str, password_file: str | None = None
) -> tuple[Callable[[], PgConnection], str]:
    """(a function opening a new connection, the conninfo to show) for a command line's
    `--dsn`/`--to` and `--password-file`. A dsn holding a password is refused: command lines
    are visible to every user (ps); the password comes from the file or libpq's PGPASSWORD /
    PGPASSFILE. The conninfo shown is the dsn's own keys, never a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        keys = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError: the libpq parser's message
        raise ConfigError("dsn", f"not a libpq conninfo or URI: {exc}") from None
    if "password" in keys:
        raise ConfigError(
            "dsn", "holds a password: put it in --password-file, PGPASSWORD or PGPASSFILE"
        )
    password = None
    if password_file is not None:
        try:
            # Its first line, as the daemon reads [store] password_file.
            password = Path(password_file).read_text().split("\n", 1)[0].rstrip("\r")
        except OSError as exc:
            raise ConfigError("password_file", f"cannot read it: {exc.strerror}") from None
    shown = " ".join(f"{k}={v}" for k, v in sorted(keys.items()))

    return PgTarget(dsn, password).connect, shown
