"""`timelined migrate --from sqlite --to DSN`: a stopped daemon's state directory moved into an
empty PostgreSQL database, the chain verified on both sides.

1. The source: a state directory no daemon runs on. Its log's chain is walked whole (the walk
   of `timelined verify`); damage refuses the migration before anything is written. An
   unfinished last line (a torn tail: never acknowledged) is not migrated; the result says so.
2. The target: its schema must hold no table at all; anything else is refused
   (`MigrationFailed`, side "target"), never merged into. Any failure after that (the
   server's, the connection's, a read of the log) is `MigrationFailed`, side "copy".
3. One transaction: the schema (`pgstore.schema.create_schema`), then the log's lines in bounded
   batches (`BATCH_LINES` lines or `BATCH_BYTES`), each batch's lines inserted into the log
   table and its events applied to the state tables with the one `apply`; progress on stderr.
4. Inside the same transaction, before the COMMIT: the chain over the log table (it must end at
   the source's head, hash for hash) and the state tables compared with a replay of the log
   table (verifier/pgstate.py). Anything wrong: ROLLBACK, the target stays empty.
5. COMMIT.

Why one transaction and not resumable from the target's head: PostgreSQL's DDL is
transactional, so schema, log and state appear together or not at all. Whatever stops a
migration (a lost connection, a full disk on the server, a killed process, a failed check)
leaves the database empty, and the remedy is to run the command again; the target is never half
written, so "refuse a non-empty target" needs no exception for a half-migrated one, and no
daemon can ever boot on a partial copy. The cost: a migration that fails near its end starts
over, and the server keeps the whole migration's WAL until the COMMIT.

The state database is not read: the state is rebuilt from the log (the truth), and the check in
step 4 compares it with a replay. Nothing in the state directory is written.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import msgspec
import psycopg

from timelined.api.verify import ChainResult, VerifyProgress, VerifyReport
from timelined.auditlog.reader import read_lines
from timelined.auditlog.record import GENESIS_PREV, RecordError, decode_unhashed
from timelined.errors import InvalidArgument, LogDamaged, MigrationFailed
from timelined.events import Record
from timelined.pgstore.logtable import insert_lines
from timelined.pgstore.schema import SCHEMA_LOCK, create_schema
from timelined.pgstore.sql import PgConnection, map_error
from timelined.state.apply import apply, set_meta
from timelined.state.replay import check_link
from timelined.verifier.chain import check_chain
from timelined.verifier.offline import source_problem
from timelined.verifier.pgrun import verify_on

BATCH_LINES = 2000
BATCH_BYTES = 4 << 20

Progress = Callable[[VerifyProgress], None]


class MigrateResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a migration did (`--json` prints it)."""

    source: str
    target: str  # the target's conninfo without any secret
    events: int
    log_bytes: int
    head_seq: int
    head_hash: str
    torn_tail: str | None  # an unfinished last line left behind (never acknowledged)
    seconds: float
    source_chain: ChainResult
    target_check: VerifyReport  # the chain over the log table and the state against a replay


def migrate_to_pg(
    state_dir: Path,
    connect: Callable[[], PgConnection],
    target: str,
    *,
    progress: Progress | None = None,
    work_dir: Path | None = None,
) -> MigrateResult:
    """Migrate `state_dir` into the empty database `connect()` reaches; raises MigrationFailed
    (nothing written) or LogDamaged (the source's chain is damaged: nothing written)."""
    started = time.perf_counter()
    try:
        problem = source_problem(state_dir, "stop it first")
    except OSError as exc:
        problem = f"cannot read {exc.filename or state_dir}: {exc.strerror or exc}"
    if problem is not None:
        raise MigrationFailed("source", problem, str(state_dir))
    say = progress or (lambda _step: None)
    try:
        conn = connect()
    except (OSError, sqlite3.Error) as exc:  # the driver's errors are sqlite3.Error's
        raise MigrationFailed("target", f"cannot connect: {exc}", target) from exc
    try:
        _refuse_non_empty(conn, target)  # at once, not after the walk; again inside the copy's
        chain = _walk_source(state_dir, say)
        with tempfile.TemporaryDirectory(prefix="timelined-migrate-", dir=work_dir) as work:
            copied, check = _copy_and_check(conn, state_dir, chain, target, say, Path(work))
    except (OSError, sqlite3.Error) as exc:  # the server's errors are sqlite3.Error's
        raise MigrationFailed(
            "copy", f"the migration failed, nothing was committed: {exc}", target
        ) from exc
    finally:
        conn.close()
    torn = None
    if chain.torn is not None:
        torn = (
            f"an unfinished last line at seq {chain.torn.seq} ({chain.torn.segment} offset "
            f"{chain.torn.offset}, {chain.torn.length} bytes) was not migrated: it was never "
            "acknowledged"
        )
    return MigrateResult(
        source=str(state_dir),
        target=target,
        events=chain.head_seq,
        log_bytes=copied,
        head_seq=chain.head_seq,
        head_hash=chain.head_hash,
        torn_tail=torn,
        seconds=round(time.perf_counter() - started, 6),
        source_chain=chain,
        target_check=check,
    )


def _walk_source(state_dir: Path, say: Progress) -> ChainResult:
    """The source log's whole chain; LogDamaged for damage (a torn tail is not)."""
    chain = check_chain(
        state_dir / "log",
        progress=lambda seq, _bytes: say(VerifyProgress("source chain", seq, seq)),
    )
    say(VerifyProgress("source chain", chain.head_seq, chain.head_seq))
    if chain.damage is not None:
        d = chain.damage
        raise LogDamaged(d.seq, f"{d.kind}: {d.detail}", d.segment)
    return chain


def _refuse_non_empty(conn: PgConnection, target: str) -> None:
    """MigrationFailed (side "target") naming a few of the tables, if the schema holds any."""
    found = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name LIMIT 5"
    ).fetchall()
    if found:
        names = ", ".join(str(row[0]) for row in found)
        raise MigrationFailed(
            "target",
            f"the target database is not empty (it has tables: {names}); migrate into an "
            "empty database",
            target,
        )


def _copy_and_check(
    conn: PgConnection,
    state_dir: Path,
    chain: ChainResult,
    target: str,
    say: Progress,
    work: Path,
) -> tuple[int, VerifyReport]:
    """Steps 2 to 5 of the module's docstring, in one transaction."""
    conn.execute("BEGIN")
    try:
        # The lock a daemon's first boot takes to create the schema: one starting on the target
        # meanwhile waits, then finds the migrated database whole.
        conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        _refuse_non_empty(conn, target)
        create_schema(conn)
        copied = _copy_log(conn, state_dir / "log", chain.head_seq, target, say)
        check = _check_target(conn, chain, work, say)
        if check.state != "ok":
            raise MigrationFailed(
                "verify",
                f"the migrated database does not verify, nothing was committed: {check.summary}",
                target,
            )
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is gone: the server rolled the transaction back itself
        raise
    return copied, check


def _copy_log(conn: PgConnection, log_dir: Path, head: int, target: str, say: Progress) -> int:
    """Insert the log's lines to `head` and apply their events, batch by batch; the bytes."""
    last_seq, last_hash = 0, GENESIS_PREV
    records: list[Record] = []
    lines: list[bytes] = []
    size = copied = 0

    def flush() -> None:
        nonlocal size, copied
        with pipelined(conn):
            for record in records:
                try:
                    apply(conn, record)
                except InvalidArgument as exc:  # a value PostgreSQL cannot hold (a NUL)
                    raise MigrationFailed(
                        "copy",
                        f"the event at seq {record.seq} cannot be stored in PostgreSQL "
                        f"({exc.message}); nothing was committed",
                        target,
                    ) from exc
            insert_lines(conn, records, lines)
        copied += size
        records.clear()
        lines.clear()
        size = 0
        say(VerifyProgress("copy", last_seq, head))

    for seq, line in read_lines(log_dir, 0, head):
        try:
            record = decode_unhashed(line[:-1])  # read_lines checked the hash and the link
        except RecordError as exc:
            raise LogDamaged(seq, f"unparsable: {exc.detail}") from None
        check_link(record, last_seq, last_hash)
        last_seq, last_hash = record.seq, record.hash
        records.append(record)
        lines.append(line)
        size += len(line)
        if len(lines) >= BATCH_LINES or size >= BATCH_BYTES:
            flush()
    if lines:
        flush()
    set_meta(conn, last_seq, last_hash)  # meta.fts_seq follows: PostgreSQL generates it
    return copied


@contextmanager
def pipelined(conn: PgConnection) -> Iterator[None]:
    """The statements inside sent without waiting for each one's answer (psycopg's pipeline
    mode): a batch's applies and inserts read nothing back, and a round trip each was most of
    a migration's time. A failure surfaces at the end, as the sqlite3 error class the
    connection maps every psycopg error to."""
    try:
        with conn.raw.pipeline():
            yield
    except psycopg.Error as exc:
        raise map_error(exc) from exc


def _check_target(
    conn: PgConnection, source: ChainResult, work: Path, say: Progress
) -> VerifyReport:
    """The verifier's run over what this transaction wrote, inside it: the chain must also end
    where the source's does, on the same hash."""
    report = verify_on(
        conn,
        work,
        trigger="migrate",
        mode="offline",
        progress=say,
        in_transaction=True,
        upto_seq=source.head_seq,
    )
    chain = report.chain
    if report.state == "ok" and chain is not None and chain.head_hash != source.head_hash:
        report.state = "damaged"
        report.summary = (
            f"damaged: the log table's head {chain.head_hash[:16]}… is not the source log's "
            f"head {source.head_hash[:16]}…"
        )
    return report


class ProgressLine:
    """Migration progress on stderr: one line rewritten in place on a terminal; elsewhere a
    line per phase and per tenth of it; with `as_json`, one JSON object per step."""

    def __init__(self, stream: TextIO, *, as_json: bool) -> None:
        self.stream = stream
        self.as_json = as_json
        self.tty = stream.isatty()
        self.shown: tuple[str, int] | None = None

    def __call__(self, step: VerifyProgress) -> None:
        total = max(step.total, 1)
        tenth = 10 * min(step.done, total) // total
        if self.as_json:
            line = msgspec.json.encode(step).decode()
        else:
            line = f"migrating: {step.phase}: {step.done}/{step.total} ({10 * tenth}%)"
        if self.tty and not self.as_json:
            self.stream.write("\r" + line.ljust(70))
        elif self.shown != (step.phase, tenth):
            self.stream.write(line + "\n")
        self.shown = (step.phase, tenth)
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and not self.as_json and self.shown is not None:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def render(result: MigrateResult) -> str:
    """A migration's result for a person."""
    lines = [
        f"migrated {result.source} to {result.target}",
        f"  log: {result.events} events, {result.log_bytes} bytes, head seq {result.head_seq} "
        f"({result.head_hash[:16]}…)",
        f"  source chain: intact through seq {result.source_chain.head_seq}",
        f"  target: {result.target_check.summary}",
    ]
    if result.torn_tail:
        lines.append(f"  note: {result.torn_tail}")
    lines.append(f"  time: {result.seconds:.2f} s")
    return "\n".join(lines)
