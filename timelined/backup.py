"""Online backup of a state directory, safe while the daemon runs (it changes nothing it holds;
SQLite may create the -wal/-shm files of a stopped daemon's state.db to read it).

Order is what makes it consistent: first the state database, through SQLite's online backup API
(one snapshot, at some seq S); then the log, whose segments are append-only, so a copy of each is
a prefix of it — and the log always holds at least S, because the writer fsyncs the log before
the state commits. A restored copy therefore boots with its state at or behind its log, and the
boot rolls forward (verdict `recovered`); a partial last line in the copy is an unacknowledged
write, which the boot cuts into quarantine. Reports are copied too; the marker never is.

The copy is as private as the source: its directories take the state directory's permission
bits (0700, or 0750 with `[daemon] state_group`), its files the same without execute (0600 or
0640), whatever the umask. `DESTINATION.partial` is created 0700 before anything is copied into
it, so no file of the copy is ever readable by others, not even for a moment. It is as shared as
the source too: everything takes the state directory's group, and a directory whose source is
setgid is setgid; a user who may not give that group gets a copy private to its owner (0700 and
0600) and a note in the result that says so.
"""

from __future__ import annotations

import grp
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from timelined.auditlog.atomic import fsync_path
from timelined.auditlog.fileops import OS_FILEOPS, FileOps, write_all
from timelined.auditlog.scan import Damage, walk_chain
from timelined.auditlog.segments import list_segments
from timelined.errors import BackupFailed


class BackupResult(msgspec.Struct, frozen=True):
    destination: str
    state_last_seq: int
    log_last_seq: int
    segments: int
    log_bytes: int
    seconds: float
    notes: list[str] = msgspec.field(default_factory=list)  # what could not be kept, once each


def backup(
    state_dir: Path,
    destination: Path,
    *,
    progress: Callable[[str], None] | None = None,
    fileops: FileOps = OS_FILEOPS,
) -> BackupResult:
    """Copy `state_dir` to `destination` (new, or an empty directory); raises BackupFailed.

    The copy is built as `DESTINATION.partial` and renamed at the end: a failure at any step
    removes it, so the destination holds a whole, checked backup or nothing.
    """
    destination = destination.absolute()  # `--to .` has a name to put `.partial` beside
    db = state_dir / "state.db"
    try:
        is_state = db.exists() and (state_dir / "log").is_dir()
    except OSError as exc:  # e.g. run as a user who may not read it: sudo -u timelined
        raise BackupFailed(
            "source", f"cannot read {state_dir}: {exc.strerror}", str(state_dir)
        ) from exc
    if not is_state:
        raise BackupFailed(
            "source",
            f"{state_dir} is not a timelined state directory (no state.db or log/)",
            str(state_dir),
        )
    if destination.is_symlink():  # the final rename cannot replace it: refuse before copying
        raise BackupFailed(
            "destination",
            f"{destination} is a symbolic link: give the directory itself "
            f"({destination.resolve()})",
            str(destination),
        )
    try:
        if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
            kind = "is not a directory" if not destination.is_dir() else "is not empty"
            raise BackupFailed("destination", f"{destination} exists and {kind}", str(destination))
    except OSError as exc:
        raise BackupFailed(
            "destination", f"cannot use {destination}: {exc.strerror}", str(destination)
        ) from exc
    partial = destination.with_name(destination.name + ".partial")
    if os.path.lexists(partial):
        # Never ours to delete: a backup killed mid-way leaves one, but so might anything else.
        raise BackupFailed(
            "destination",
            f"{partial} exists (left by an interrupted backup?): remove it and try again",
            str(destination),
        )
    try:
        source_st = state_dir.stat()
        dir_mode = stat.S_IMODE(source_st.st_mode) & 0o777
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir(mode=0o700)  # private from the start; its final mode is set at the end
    except OSError as exc:
        raise BackupFailed(
            "destination", f"cannot create {partial}: {exc.strerror}", str(destination)
        ) from exc
    try:
        (partial / "log").mkdir(mode=0o700)
        return _copy(
            state_dir,
            destination,
            partial,
            progress or (lambda _: None),
            fileops,
            dir_mode,
            source_st.st_gid,
        )
    except BackupFailed:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None) or str(destination)
        raise BackupFailed(
            "copy", f"copying failed at {where}: {problem}", str(destination)
        ) from exc
    except BaseException:  # anything else (Ctrl-C, a state.db without its meta row): no leftover
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _copy(
    state_dir: Path,
    destination: Path,
    partial: Path,
    say: Callable[[str], None],
    ops: FileOps,
    dir_mode: int,
    gid: int,
) -> BackupResult:
    started = time.perf_counter()
    db = state_dir / "state.db"
    say("copying the state database (one snapshot)")
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    target = sqlite3.connect(partial / "state.db")
    try:
        source.backup(target)
        state_seq = int(target.execute("SELECT last_seq FROM meta WHERE id = 1").fetchone()[0])
    except sqlite3.Error as exc:  # SQLite does not say which file: the source, almost always
        raise BackupFailed("copy", _state_copy_failed(state_dir, exc), str(destination)) from exc
    finally:
        target.close()
        source.close()
    total = 0
    segments = list_segments(state_dir / "log")
    for n, seg in enumerate(segments, 1):
        say(f"copying log segment {n}/{len(segments)} {seg.name}")
        total += _copy_prefix(Path(seg.path), partial / "log" / seg.name, ops)
    if (state_dir / "reports").is_dir():
        shutil.copytree(state_dir / "reports", partial / "reports")
    say("checking the copied log's chain")
    chain = walk_chain(partial / "log")
    if chain.damage is not None:
        raise BackupFailed("copy", _damage_cause(state_dir, chain.damage), str(destination))
    if chain.head_seq < state_seq:
        raise BackupFailed(
            "copy",
            f"the copied log ends at seq {chain.head_seq}, before the state ({state_seq})",
            str(destination),
        )
    notes = _restrict(partial, state_dir, dir_mode, gid)
    _fsync_tree(partial, ops)
    if destination.exists():
        destination.rmdir()
    ops.rename(str(partial), str(destination))
    ops.fsync_dir(str(destination.parent))
    return BackupResult(
        destination=str(destination),
        state_last_seq=state_seq,
        log_last_seq=chain.head_seq,
        segments=len(segments),
        log_bytes=total,
        seconds=round(time.perf_counter() - started, 3),
        notes=notes,
    )


def _state_copy_failed(state_dir: Path, exc: sqlite3.Error) -> str:
    """The state database's copy failed: name it, and the one cause SQLite words obscurely."""
    db = state_dir / "state.db"
    text = f"copying failed at {db}: {exc}"
    wal_index = Path(f"{db}-shm")
    if not wal_index.exists() and not os.access(state_dir, os.W_OK):
        # A stopped daemon's WAL database needs its -shm created even to be read.
        text += (
            f" (SQLite cannot read it without creating {wal_index.name}, and {state_dir} is "
            "read-only: back up from a writable copy, or copy log/ alone: the boot rebuilds "
            "the state from it)"
        )
    return text


def _damage_cause(state_dir: Path, damage: Damage) -> str:
    """Why the copy does not verify: the source's own damage, or the copying (rare, the disk)."""
    where = f"{damage.kind} at seq {damage.seq}" + (
        f" in {damage.segment}" if damage.segment else ""
    )
    source = walk_chain(state_dir / "log").damage
    if source is not None and source.seq <= damage.seq:
        return (
            f"the source's log is damaged ({where}): there is no whole log to back up; "
            "see docs/recovery.md ('degraded')"
        )
    return f"the copied log does not verify ({where}) though the source's does: check the disk"


def _copy_prefix(src: Path, dst: Path, ops: FileOps) -> int:
    """Copy a segment up to its last newline: the part the writer has finished."""
    size = src.stat().st_size
    fin = ops.open_read(str(src))
    try:
        fout = ops.open_new(str(dst), 0o600)
        try:
            copied = written = 0
            tail = b""
            while copied < size:
                chunk = ops.pread(fin, min(1 << 20, size - copied), copied)
                if not chunk:
                    break
                copied += len(chunk)
                data = tail + chunk
                cut = data.rfind(b"\n") + 1
                write_all(ops, fout, data[:cut])
                written += cut
                tail = data[cut:]
            return written
        finally:
            ops.close(fout)
    finally:
        ops.close(fin)


def _restrict(root: Path, source: Path, dir_mode: int, gid: int) -> list[str]:
    """Directories `dir_mode` (the source state directory's bits) and setgid where their source
    directory is, regular files the same without execute, all of group `gid` (the source's):
    the copy as private and as shared as the source, whatever the umask. A user who may not
    give that group gets a copy private to its owner, and a note saying so (the result's)."""
    notes: list[str] = []
    try:
        # Once, on the top directory: every path of the copy has the same owner and group, so
        # what is refused here would be refused everywhere.
        _chgrp(root, gid)
    except PermissionError as exc:  # neither root nor a member of the group: not a failure
        group = _group_name(gid)
        notes.append(
            f"the copy does not have the source's group {group} ({exc.strerror}): it is "
            f"private to its owner; run the backup as root or as a member of {group}"
        )
        dir_mode &= 0o700  # the group bits were granted to the source's group, not this one
    file_mode = dir_mode & 0o666
    for dirpath, _, files in os.walk(root):
        here = Path(dirpath)
        for name in files:
            path = here / name
            if not path.is_symlink():
                if not notes:
                    _chgrp(path, gid)
                path.chmod(file_mode)
        if not notes:
            _chgrp(here, gid)
        here.chmod(dir_mode | _setgid_of(source / here.relative_to(root)))
    return notes


def _chgrp(path: Path, gid: int) -> None:
    """Give `path` the group `gid`, before its chmod: a chown may clear a setgid bit."""
    if path.lstat().st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)


def _setgid_of(path: Path) -> int:
    """S_ISGID if the directory `path` has it, else 0 (also when it is gone since the copy)."""
    try:
        return path.stat().st_mode & stat.S_ISGID
    except OSError:
        return 0


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _fsync_tree(root: Path, ops: FileOps) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name, ops)
        ops.fsync_dir(dirpath)
