"""`timelined verify --state-dir DIR`: both checks, read-only, on a stopped daemon's directory.

Nothing is written into DIR: the state database (and its WAL) is copied into a temporary
directory first (opening a WAL database, even read-only, would create files next to it), and
the scratch replay goes there too. A daemon running on DIR (its lock is held) is refused: use
`timelinectl verify`, or verify a copy.

Exit codes: 0 all is well; 1 drift or damage found; 2 the check could not run.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import msgspec

from timelined.api.verify import VerifyProgress, VerifyReport
from timelined.stdout import write
from timelined.verifier.runner import Paths, verify_paths

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_CANNOT = 2


def _daemon_running(lock_path: Path) -> bool:
    """Whether a daemon holds STATE_DIR/lock (a shared probe, released at once)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases the probe's lock
    return False


def source_problem(
    state_dir: Path,
    advice: str = "use `timelinectl verify`, or verify a copy of the directory",
) -> str | None:
    """Why `state_dir` cannot be read as a stopped daemon's state directory, if it cannot."""
    if not state_dir.is_dir():
        return f"{state_dir} is not a directory"
    if not (state_dir / "state.db").is_file() or not (state_dir / "log").is_dir():
        return f"{state_dir} is not a timelined state directory (no state.db and log/ in it)"
    if _daemon_running(state_dir / "lock"):
        return f"a timelined daemon is running on {state_dir}; {advice}"
    return None


class _ProgressLine:
    """One line on a terminal's stderr, rewritten in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def __call__(self, progress: VerifyProgress) -> None:
        total = max(progress.total, 1)
        pct = 100 * min(progress.done, total) // total
        text = f"verifying ({progress.phase}): {pct}% ({progress.done}/{progress.total})"
        self.stream.write("\r" + text.ljust(60))
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def run_offline(state_dir: Path, *, as_json: bool, progress: bool) -> int:
    """Verify `state_dir` read-only; print a human report (or JSON); return the exit code."""
    try:
        problem = source_problem(state_dir)
    except OSError as exc:  # e.g. an auditor outside the group of a 0750 state directory
        problem = f"cannot read {exc.filename or state_dir}: {exc.strerror or exc}"
    if problem is not None:
        return _cannot_run(problem, as_json=as_json)
    line = _ProgressLine(sys.stderr) if progress and sys.stderr.isatty() else None
    with tempfile.TemporaryDirectory(prefix="timelined-verify-") as work:
        paths = Paths(state_dir / "state.db", state_dir / "log", Path(work), state_dir / "tree")
        try:
            report = verify_paths(
                paths, trigger="offline", mode="offline", copy=True, progress=line
            )
        except OSError as exc:
            if line is not None:
                line.clear()
            return _cannot_run(f"cannot run: {exc}", as_json=as_json)
        finally:
            if line is not None:
                line.clear()
    return _print(report, state_dir, as_json=as_json)


def run_offline_pg(dsn: str, password_file: str | None, *, as_json: bool, progress: bool) -> int:
    """`timelined verify --dsn`: verify a PostgreSQL store, read-only (daemons may be running:
    the state is read at one snapshot); print the report; return the exit code."""
    from timelined.errors import ConfigError
    from timelined.verifier.pgrun import pg_connector, verify_pg

    try:
        connect, target = pg_connector(dsn, password_file)
    except ConfigError as exc:
        return _cannot_run(exc.message, as_json=as_json)
    try:  # a database it cannot reach is a check that could not run (exit 2), not a report
        conn = connect()
    except (sqlite3.Error, OSError) as exc:
        return _cannot_run(f"cannot connect to postgresql {target}: {exc}", as_json=as_json)
    line = _ProgressLine(sys.stderr) if progress and sys.stderr.isatty() else None
    with tempfile.TemporaryDirectory(prefix="timelined-verify-") as work:
        try:
            report = verify_pg(
                lambda: conn, Path(work), trigger="offline", mode="offline", progress=line
            )
        finally:
            if line is not None:
                line.clear()
    return _print(report, f"postgresql {target}", as_json=as_json)


def _print(report: VerifyReport, where: object, *, as_json: bool) -> int:
    """Print a report (human or JSON) and return the exit code its verdict gives."""
    if as_json:
        write(sys.stdout, msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    else:
        write(sys.stdout, render(report, where) + "\n")
    if report.state == "ok":
        return EXIT_OK
    return EXIT_FOUND if report.state in ("drift", "damaged") else EXIT_CANNOT


def _cannot_run(problem: str, *, as_json: bool) -> int:
    """Say why the check could not run (with --json also as an object on stdout); exit 2."""
    if as_json:
        write(
            sys.stdout,
            msgspec.json.encode({"state": "cannot run", "error": problem}).decode() + "\n",
        )
    print(f"timelined verify: {problem}", file=sys.stderr)
    return EXIT_CANNOT


def render(report: VerifyReport, state_dir: object = None) -> str:
    """A verification report for a person (`state_dir`: what was verified)."""
    lines = [f"timelined verify: {state_dir}" if state_dir else f"verification {report.id}"]
    _, _, said = report.summary.partition(": ")
    lines.append(f"result: {report.state.upper()}: {said or report.summary}")
    chain = report.chain
    if chain is not None:
        if chain.damage is not None:  # the walk stopped there: what it read, not the log
            scope = f"read until the first bad seq ({chain.damage.seq})"
        elif chain.upto_seq is not None:
            scope = f"up to seq {chain.upto_seq}"
        else:
            scope = "the whole log"
        # A PostgreSQL store's log is a table: no segments (pgstore/chain.py).
        where = (
            f"{chain.segments} segment(s)"
            if chain.segments or not chain.records
            else "the log table"
        )
        good = "good " if chain.damage is not None else ""
        lines.append(
            f"log: {scope}: {chain.records} {good}records in {where}, {chain.bytes_scanned} bytes"
        )
        if chain.damage is not None:
            d = chain.damage
            where = f" in {d.segment}" if d.segment else ""
            where += f" at offset {d.offset}" if d.offset is not None else ""
            found = (
                f" (the line there holds seq {d.found_seq})"
                if d.found_seq is not None and d.found_seq != d.seq
                else ""
            )
            lines.append(f"  FIRST BAD SEQ {d.seq}{where}: {d.kind}: {d.detail}{found}")
        else:
            lines.append(f"  hash chain intact through seq {chain.head_seq}")
    if report.search_index.startswith("not checked: the log could not be replayed"):
        lines.append(
            f"state: snapshot at seq {report.snapshot_seq}; not compared: the log cannot be "
            "replayed to it"
        )
    else:
        lines.append(
            f"state: snapshot at seq {report.snapshot_seq}; {report.events_checked} events "
            "replayed and compared entity by entity"
        )
    if report.search_index and not report.search_index.startswith("not checked: the log"):
        lines.append(f"  search index: {report.search_index}")
    tree = report.tree
    if tree is not None and tree.state == "mismatch":
        lines.append(
            f"tree: MISMATCH at leaf {tree.first_bad_leaf} (seq {(tree.first_bad_leaf or 0) + 1}"
            f"), level {tree.level} node {tree.index}: {tree.detail}; the daemon rebuilds the "
            "tree from the log at a repair (timelinectl repair) or at the boot after a run found it"
        )
    elif tree is not None:
        lines.append(f"tree: {tree.state}: {tree.detail}")
    if report.differences_total:
        shown = len(report.differences)
        lines.append(
            f"differences: {report.differences_total}"
            + (f" (the first {shown} are listed)" if shown < report.differences_total else "")
        )
        lines += [f"  - {d.describe()}" for d in report.differences]
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.error:
        lines.append(f"error: {report.error}")
    lines.append(f"time: {report.seconds:.2f} s ({report.events_per_second:,.0f} events/s)")
    return "\n".join(lines)
