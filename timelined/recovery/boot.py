"""Boot: lock, marker, tail scan, torn-tail cut, state check, rebuild, roll-forward, report.

The procedure of DESIGN.md's "Boot, shutdown and recovery", steps 1-5. Its contract:

- Fast path: a marker that matches the log's tail and the state's meta means nothing is scanned;
  the work done does not depend on the size of the history.
- Unclean path: only the log past the state's `last_seq` is read. A torn tail is cut into
  quarantine. Damage before the tail is never repaired: the boot ends `degraded` and the daemon
  serves reads only. A state database that is missing, unreadable, of an unknown schema, failing
  `quick_check`, ahead of the log or disagreeing with it is moved to quarantine and rebuilt.
- Every boot writes a boot record; an unclean boot also writes a full recovery report. A boot
  that fails still writes its report, then raises `BootFailed`.
"""

from __future__ import annotations

import grp
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from timelined import __version__
from timelined.api.reports import Damage, Rebuild, Report, TornTail
from timelined.auditlog.atomic import fsync_path, make_dirs
from timelined.auditlog.fileops import FileOps, OsFileOps
from timelined.auditlog.record import GENESIS_PREV
from timelined.auditlog.repair import cut_torn_tail, release_reserved
from timelined.auditlog.scan import Damage as ScanDamage
from timelined.auditlog.scan import TailScan, scan_tail, walk_chain
from timelined.auditlog.segments import list_segments
from timelined.auditlog.writer import LogHead
from timelined.config import Config, read_password
from timelined.errors import BootFailed, LocalError, LogDamaged, StorageError, TimelinedError
from timelined.ids import utc_now
from timelined.recovery.damage import DamageRecord, clear_damage, recorded_damage
from timelined.recovery.lock import StateLock
from timelined.recovery.marker import Marker, take_marker
from timelined.recovery.report import report_id, write_report
from timelined.state.db import open_write, read_meta
from timelined.state.model import Meta
from timelined.state.replay import rebuild, roll_forward
from timelined.state.schema import UnknownSchema

log = logging.getLogger("timelined.recovery")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class BootResult:
    report: Report
    head: LogHead | None  # where the writer appends; None when the log is damaged (read-only)
    read_only: LogDamaged | None
    lock: StateLock
    new_state: bool = False  # a first boot: the state directory was empty
    postgresql: bool = False  # the log and state are in PostgreSQL: nothing local to recover


def boot(
    config: Config, *, fileops: FileOps | None = None, progress: Progress | None = None
) -> BootResult:
    """Run the boot procedure; the returned lock is held until the daemon exits."""
    ops = fileops or OsFileOps()
    try:
        modes = state_modes(config)
        os.umask(modes.umask)  # every file the daemon creates from here on is private
        make_dirs(config.state_dir, ops)  # durable: a power cut must not take the log back
        lock = StateLock.acquire(config.lock_path)  # StateLocked: a second daemon refuses to start
        _tighten(config.state_dir, modes)
    except (OSError, StorageError) as exc:
        # Without the lock there is no report to write: the directory may be another's.
        reason = f"cannot use the state directory: {_os_reason(exc)}"
        log.error("boot failed: %s", reason)
        raise BootFailed(reason, None) from exc
    started = utc_now()
    report = Report(
        id=report_id("boot", started), kind="boot", version=__version__, started_at=started
    )
    try:
        if config.store.backend == "postgresql":
            result = _boot_postgresql(config, ops, report, lock, progress or _no_progress)
        else:
            result = _boot(config, ops, report, lock, progress or _no_progress)
            result = _check_recorded_damage(config, ops, result)
        _finish(config, report, ops)  # a report that cannot be written fails the boot (documented)
    except BaseException as exc:
        report.verdict = "failed"
        error = (
            exc.message
            # A LocalError is reported as any unexpected exception is: named by its type.
            if isinstance(exc, TimelinedError) and not isinstance(exc, LocalError)
            else _os_reason(exc)
            if isinstance(exc, OSError)
            else f"{type(exc).__name__}: {exc}"
        )
        report.error = error
        report.actions.append(
            "Read the error above and docs/recovery.md ('failed'); the log was not modified. "
            "Fix the cause (permissions, disk space, a damaged file) and start the daemon again."
        )
        try:
            path: str | None = _finish(config, report, ops)
        except (OSError, StorageError) as unwritable:  # e.g. a read-only reports/: say so too
            path = None
            why = f"the report could not be written: {_os_reason(unwritable)}"
            report.error = why if why.endswith(error) else f"{error}; {why}"
        lock.release()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        log.error("boot failed: %s", report.error)
        raise BootFailed(report.error, path) from exc
    return result


@dataclass(frozen=True)
class StateModes:
    """The permissions of the state directory's entries, and the umask that gives them."""

    directory: int
    file: int
    umask: int
    gid: int | None  # the group of [daemon] state_group, else None (the owner's only)


def state_modes(config: Config) -> StateModes:
    """0700/0600, or 0750/0640 for `[daemon] state_group` (setgid directories, so that files
    created later take the group too). An unknown group raises OSError."""
    name = config.daemon.state_group
    if not name:
        return StateModes(0o700, 0o600, 0o077, None)
    try:
        gid = int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise OSError(f"daemon.state_group: no group named {name!r}") from None
    return StateModes(0o2750, 0o640, 0o027, gid)


def _tighten(state_dir: Path, modes: StateModes) -> None:
    """Give every directory and regular file under `state_dir` its mode (and group), whatever
    umask or tool made it; log the ones that were open to more than `modes` allow. Sockets and
    symlinks keep theirs: a socket's mode is `socket_mode`'s."""
    loosened: list[str] = []
    for path in [state_dir, *state_dir.rglob("*")]:
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            want = modes.directory
        elif stat.S_ISREG(st.st_mode):
            want = modes.file
        else:
            continue
        if modes.gid is not None and st.st_gid != modes.gid:
            os.chown(path, -1, modes.gid)
        have = stat.S_IMODE(st.st_mode)
        if have & ~want & 0o777:
            loosened.append(str(path.relative_to(state_dir.parent)))
        if have != want:
            path.chmod(want)
    if loosened:
        shown = ", ".join(loosened[:5]) + (
            f" and {len(loosened) - 5} more" if len(loosened) > 5 else ""
        )
        log.warning(
            "tightened the permissions of %d path(s) that other users could read or write "
            "(now %o for directories, %o for files): %s",
            len(loosened),
            modes.directory & 0o777,
            modes.file,
            shown,
        )


def describe_boot(result: BootResult) -> str:
    """The log line that says how the boot went: a first boot, the fast path, or a recovery."""
    report = result.report
    if result.postgresql:
        how = "PostgreSQL: log and state commit together, nothing to recover"
    elif result.new_state:
        how = "first boot: a new, empty state directory"
    elif report.fast_path:
        how = "fast path"
    else:
        how = f"recovery path, {report.events_rolled_forward} events rolled forward"
    return f"boot verdict {report.verdict} ({how})"


def _os_reason(exc: OSError | StorageError) -> str:
    """An OS error as `PATH: what went wrong`, the path first (a traceback's text is not)."""
    if isinstance(exc, StorageError):
        return exc.message
    if isinstance(exc, FileExistsError):  # mkdir met a file where a directory should be
        return f"{exc.filename} exists and is not a directory"
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


def _finish(config: Config, report: Report, ops: FileOps) -> str:
    report.finished_at = utc_now()
    if report.kind == "recovery":
        full = msgspec.structs.replace(report, id=report.id.replace("boot-", "recovery-", 1))
        write_report(config.reports_dir, full, ops)
        report.recovery_report = full.id
        report.path = None
    return str(write_report(config.reports_dir, report, ops))


def _boot(
    config: Config, ops: FileOps, report: Report, lock: StateLock, progress: Progress
) -> BootResult:
    with report.phase("marker"):
        taken = take_marker(config.marker_path, ops)
    marker = taken.marker
    report.marker_found = marker is not None
    if taken.problem not in (None, "absent"):
        report.marker_problem = taken.problem

    if marker is None and _is_fresh(config):
        with report.phase("create-state"):
            open_write(config.state_db, mode=state_modes(config).file).close()
        report.verdict = "clean"
        report.integrity_check = "skipped (new state directory)"
        report.actions.append("A new, empty state directory was set up.")
        return BootResult(report, LogHead(0, GENESIS_PREV, 0), None, lock, new_state=True)

    with report.phase("open-state"):
        conn, state_problem = _open_state(config)
    meta = read_meta(conn) if conn is not None else None
    report.state_last_seq_before = meta.last_seq if meta is not None else None

    if conn is not None and meta is not None and marker is not None:
        with report.phase("fast-path"):
            head = _fast_path_head(config, ops, marker, meta)
        if head is not None:
            conn.close()
            report.fast_path = True
            report.log_last_seq = head.seq
            report.integrity_check = "skipped (clean stop)"
            report.verdict = "clean"
            return BootResult(report, head, None, lock)

    # Unclean path (or a marker that does not match what is on disk).
    report.kind = "recovery"
    if marker is not None and not report.marker_problem:
        report.marker_problem = _marker_mismatch(marker, meta, state_problem)
    lost = 0
    if conn is not None:
        with report.phase("quick-check"):
            check = _quick_check(conn)
        report.integrity_check = check
        if check != "ok":
            conn.close()
            conn, state_problem = None, f"quick_check failed: {check}"
    else:
        report.integrity_check = f"not run: {state_problem}"

    after_seq = meta.last_seq if conn is not None and meta is not None else 0
    expected = meta.last_hash if conn is not None and meta is not None else None
    with report.phase("scan"):
        scan = scan_tail(config.log_dir, after_seq, expected, ops)
    report.segments_scanned += scan.segments_scanned
    report.lines_scanned += scan.lines_scanned
    report.log_last_seq = scan.last_seq  # known now: a boot that fails later reports it too

    if conn is not None and after_seq > 0 and scan.anchor in ("mismatch", "missing"):
        # The state is ahead of the log or disagrees with it at its last seq: it holds events
        # the log does not (log.fsync other than "always", or tampering). The log wins.
        assert meta is not None
        lost = max(meta.last_seq - scan.last_seq, 1 if scan.anchor == "mismatch" else 0)
        conn.close()
        conn = None
        state_problem = f"the state is at seq {meta.last_seq} but the log " + (
            "ends at seq " + str(scan.last_seq)
            if scan.anchor == "missing"
            else "has a different event there"
        )
        with report.phase("rescan"):
            scan = scan_tail(config.log_dir, 0, None, ops)
        report.segments_scanned += scan.segments_scanned
        report.lines_scanned += scan.lines_scanned
        report.log_last_seq = scan.last_seq

    read_only: LogDamaged | None = None
    if scan.damage is not None:
        read_only = _report_damage(report, scan.damage)
    elif scan.torn is not None:
        with report.phase("cut-torn-tail"):
            kept = cut_torn_tail(
                config.log_dir, scan.torn, quarantine_dir=config.quarantine_dir, fileops=ops
            )
        report.torn.append(
            TornTail(
                segment=scan.torn.segment,
                offset=scan.torn.offset,
                length=scan.torn.length,
                quarantined_to=kept,
            )
        )
        log.warning(
            "cut a torn tail of %d bytes from %s at offset %d into %s",
            scan.torn.length,
            scan.torn.segment,
            scan.torn.offset,
            kept,
        )
        report.reserved_released = scan.torn.reserved
    elif scan.reserved is not None:
        with report.phase("release-reserved"):
            release_reserved(config.log_dir, scan.reserved, fileops=ops)
        report.reserved_released = scan.reserved.length
        log.info(
            "released %d bytes reserved ahead of the log's end in %s",
            scan.reserved.length,
            scan.reserved.segment,
        )

    if conn is None:
        with report.phase("rebuild"):
            conn, replayed = _rebuild(config, ops, state_problem or "state missing", scan, progress)
        report.rebuilds.append(
            Rebuild(
                reason=state_problem or "state missing",
                quarantined_to=replayed[1],
                events_replayed=replayed[0],
                events_lost=lost,
            )
        )
    else:
        with report.phase("roll-forward"):
            rolled = roll_forward(
                conn,
                config.log_dir,
                stop_at=scan.last_seq,
                progress=lambda done, seq: progress(
                    "roll-forward", done, scan.last_seq - after_seq
                ),
            )
        report.events_rolled_forward = rolled.applied

    final = read_meta(conn)
    conn.close()
    report.log_last_seq = scan.last_seq
    report.events_lost = lost
    if read_only is not None:
        report.verdict = "degraded"
        return BootResult(report, None, read_only, lock)
    if final.last_seq != scan.last_seq:
        raise LogDamaged(
            final.last_seq,
            f"the state reached seq {final.last_seq}, the log ends at {scan.last_seq}",
        )
    report.verdict = "recovered_with_loss" if lost else "recovered"
    if lost:
        report.actions.append(
            f"{lost} event(s) the state database held are not in the log and are lost. If "
            "log.fsync is not 'always', consider 'always'; if it is, treat this as tampering "
            "and compare the quarantined state with a backup."
        )
    return BootResult(report, LogHead(scan.last_seq, scan.last_hash, scan.end_offset), None, lock)


def _boot_postgresql(
    config: Config, ops: FileOps, report: Report, lock: StateLock, progress: Progress
) -> BootResult:
    """The boot of a daemon whose log and state are in PostgreSQL (`[store]`): nothing local
    to recover. The database commits each batch's log rows and state changes in one
    transaction, so there is no torn tail to cut and no state to roll forward; the engine
    checks the schema as it connects. The state directory keeps the lock, this report, the
    marker (a crash is still worth saying), the Merkle tree and the signing key."""
    with report.phase("marker"):
        taken = take_marker(config.marker_path, ops)
    report.marker_found = taken.marker is not None
    report.integrity_check = "skipped (PostgreSQL: the server keeps its own consistency)"
    if taken.problem not in (None, "absent"):
        report.marker_problem = taken.problem
    if taken.marker is None and any(config.state_dir.glob("reports/boot-*")):
        # A crash: its report is a recovery report (where an operator looks), with no work.
        report.kind = "recovery"
        report.marker_problem = report.marker_problem or "absent: the last run did not stop cleanly"
        report.actions.append(
            "The last run did not stop cleanly. Nothing acknowledged was lost: on PostgreSQL "
            "every batch's log rows and state changes commit in one transaction, so there is "
            "nothing to roll forward; an unanswered batch either committed whole or not at all."
        )
    return _check_recorded_damage_pg(
        config, ops, BootResult(report, None, None, lock, postgresql=True)
    )


def _check_recorded_damage_pg(config: Config, ops: FileOps, result: BootResult) -> BootResult:
    """Damage a verification recorded in the log table: walk the table's chain again; still
    there, the daemon serves read-only, as on SQLite (docs/recovery.md, 'degraded')."""
    record = recorded_damage(config.damage_path)
    if record is None:
        return result
    # Imported here: psycopg is the optional `postgresql` extra.
    from timelined.pgstore.chain import check_table_chain
    from timelined.pgstore.sql import connect

    report = result.report
    report.read_only_before = True
    with report.phase("recorded-damage"):
        conn = connect(config.store.dsn, read_password(config.store))
        try:
            chain = check_table_chain(conn)
        finally:
            conn.close()
    if chain.damage is None:
        _damage_gone(config, ops, report, record, "the log table's whole chain")
        return result
    d = chain.damage
    report.verdict = "degraded"
    report.damage = Damage(seq=d.seq, segment=None, offset=None, reason=f"{d.kind}: {d.detail}")
    report.actions += [
        f"The log table is damaged at seq {d.seq}: {d.kind}.",
        "The daemon serves reads and refuses writes (LogDamaged).",
        "Run `timelined verify --dsn DSN`, and restore the database from a backup or its "
        "replica (docs/recovery.md, 'degraded').",
    ]
    return BootResult(
        report, None, LogDamaged(d.seq, f"{d.kind}: {d.detail}"), result.lock, postgresql=True
    )


def _damage_gone(
    config: Config, ops: FileOps, report: Report, record: DamageRecord, walked: str
) -> None:
    """The chain (`walked`) verifies again: forget the recorded damage, and say so."""
    clear_damage(config.damage_path, ops)
    report.actions.append(
        f"The log damage a verification recorded (seq {record.seq}, {record.found_at}) is "
        f"gone: {walked} verifies again, so writes are accepted again."
    )
    log.warning("the recorded log damage at seq %s is gone: the chain verifies", record.seq)


def _report_damage(report: Report, d: ScanDamage) -> LogDamaged:
    report.damage = Damage(
        seq=d.seq, segment=d.segment, offset=d.offset, reason=f"{d.kind}: {d.detail}"
    )
    report.actions += [
        f"The audit log is damaged at seq {d.seq} ({d.segment}, offset {d.offset}): {d.kind}.",
        "The daemon serves reads and refuses writes (LogDamaged).",
        "Keep a copy of the state directory, run `timelined verify --state-dir DIR` on it, "
        "and restore the damaged segment from a backup (docs/recovery.md, 'degraded').",
    ]
    return d.error()


def _check_recorded_damage(config: Config, ops: FileOps, result: BootResult) -> BootResult:
    """Damage a verification recorded (recovery/damage.py): walk the whole chain again."""
    record = recorded_damage(config.damage_path)
    if record is None:
        return result
    report = result.report
    report.read_only_before = True
    if result.read_only is not None:
        return result
    with report.phase("recorded-damage"):
        chain = walk_chain(config.log_dir, fileops=ops)
    if chain.damage is None:
        _damage_gone(config, ops, report, record, "the whole chain")
        return result
    report.verdict = "degraded"
    return BootResult(report, None, _report_damage(report, chain.damage), result.lock)


def _is_fresh(config: Config) -> bool:
    """Nothing was ever written here: no state database and no log segment."""
    if config.state_db.exists():
        return False
    return not config.log_dir.exists() or not any(config.log_dir.glob("*.jsonl"))


def _open_state(config: Config) -> tuple[sqlite3.Connection | None, str | None]:
    """The state's write connection, or None with the reason it must be rebuilt."""
    if not config.state_db.exists():
        return None, "the state database is missing"
    try:
        conn = open_write(config.state_db, create=False)
        read_meta(conn)
    except UnknownSchema as exc:
        return None, str(exc)
    except sqlite3.DatabaseError as exc:
        return None, f"the state database cannot be opened: {exc}"
    return conn, None


def _quick_check(conn: sqlite3.Connection) -> str:
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return f"error: {exc}"
    text = "; ".join(str(r[0]) for r in rows[:5])
    return "ok" if text == "ok" else text


def _marker_mismatch(marker: Marker, meta: Meta | None, state_problem: str | None) -> str:
    """Which side disagrees with a marker the fast path refused (the report names it)."""
    if state_problem is not None or meta is None:
        return f"the state database does not match it: {state_problem or 'no meta'}"
    if (meta.last_seq, meta.last_hash) != (marker.last_seq, marker.last_hash):
        return f"the state database is at seq {meta.last_seq}, the marker at {marker.last_seq}"
    return "the marker does not match the log's tail"


def _fast_path_head(config: Config, ops: FileOps, marker: Marker, meta: Meta) -> LogHead | None:
    """The head the marker promises, if the state and the log's last segment agree with it."""
    if (meta.last_seq, meta.last_hash) != (marker.last_seq, marker.last_hash):
        return None
    segments = list_segments(config.log_dir, ops) if config.log_dir.exists() else []
    if not segments:
        return LogHead(0, marker.last_hash, 0) if marker.last_seq == 0 else None
    last = segments[-1]
    try:
        size = ops.size(last.path)
    except OSError:
        return None
    if last.name != marker.segment or size != marker.log_bytes:
        return None
    return LogHead(marker.last_seq, marker.last_hash, size)


def _quarantine_state(config: Config, ops: FileOps) -> str | None:
    """Move state.db (and its -wal/-shm) into quarantine; returns where the database went."""
    if not config.state_db.exists():
        return None
    config.quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = utc_now().replace(":", "").replace("-", "").replace(".", "")
    target = config.quarantine_dir / f"state-{stamp}.db"
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(config.state_db) + suffix)
        if src.exists():
            ops.rename(str(src), str(target) + suffix)
    ops.fsync_dir(str(config.quarantine_dir))
    ops.fsync_dir(str(config.state_dir))
    return str(target)


def _rebuild(
    config: Config, ops: FileOps, reason: str, scan: TailScan, progress: Progress
) -> tuple[sqlite3.Connection, tuple[int, str | None]]:
    log.warning("rebuilding the state database from the log: %s", reason)
    kept = _quarantine_state(config, ops)
    tmp = config.state_dir / "state.db.rebuild"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    result = rebuild(
        config.log_dir,
        tmp,
        upto_seq=scan.last_seq,
        progress=lambda done, seq: progress("rebuild", done, scan.last_seq),
    )
    fsync_path(tmp, ops)  # the scratch replay ran without fsync; make the file durable before use
    ops.rename(str(tmp), str(config.state_db))
    ops.fsync_dir(str(config.state_dir))
    return open_write(config.state_db), (result.applied, kept)
