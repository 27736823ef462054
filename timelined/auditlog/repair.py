"""Repairing the log's tail: a torn tail copied to quarantine, then cut off its segment.

The one place the boot changes log bytes it did not write in this run; scan.py only reads and
names what it finds (a `TornTail`), this module acts on it.
"""

from __future__ import annotations

import os

from timelined.auditlog.fileops import OS_FILEOPS, FileOps, Handle, write_all
from timelined.auditlog.scan import ReservedTail, TornTail
from timelined.auditlog.writer import _write_error
from timelined.errors import FatalStorageError, LogDamaged


def cut_torn_tail(
    log_dir: str | os.PathLike[str],
    torn: TornTail,
    *,
    quarantine_dir: str | os.PathLike[str] | None = None,
    fileops: FileOps | None = None,
) -> str:
    """Copy a torn tail to quarantine, then cut it off its segment; returns the copy's path.

    Order makes a crash at any point safe: the copy is durable (file and directory fsynced)
    before the segment is truncated, and a repeated cut rewrites the same copy. The copy is
    `<quarantine>/<segment>.<offset>.torn`, or `<segment>.<offset>.<n>.torn` when an earlier
    crash tore different bytes at the same offset (that copy is kept, never replaced); the
    quarantine directory defaults to the log directory's sibling `quarantine`
    (STATE_DIR/quarantine). The reserved space after the torn bytes (`torn.reserved` NULs) is
    cut with them and not copied.
    """
    fops = fileops or OS_FILEOPS
    base = os.fspath(log_dir)
    qdir = (
        os.fspath(quarantine_dir)
        if quarantine_dir is not None
        else os.path.join(os.path.dirname(os.path.abspath(base)), "quarantine")  # noqa: PTH100, PTH118, PTH120
    )
    seg_path = os.path.join(base, torn.segment)  # noqa: PTH118
    final = tmp = ""
    current = ""
    try:
        current = qdir
        try:
            fops.listdir(qdir)
        except FileNotFoundError:
            fops.mkdir(qdir)
            _fsync_dir(fops, os.path.dirname(os.path.abspath(qdir)))  # noqa: PTH100, PTH120
        current = seg_path
        handle = fops.open_read(seg_path)
        try:
            size = fops.fstat_size(handle)
            data = fops.pread(handle, torn.length, torn.offset)
        finally:
            fops.close(handle)
        if size != torn.offset + torn.length + torn.reserved or data != torn.data:
            raise LogDamaged(torn.seq, "the segment changed since it was scanned", torn.segment)
        current = qdir
        final = _quarantine_name(fops, qdir, f"{torn.segment}.{torn.offset}", data)
        tmp = final + ".tmp"
        current = tmp
        handle = fops.open_new(tmp)
        try:
            write_all(fops, handle, data)
            _fsync(fops, handle, tmp)
        finally:
            fops.close(handle)
        current = final
        fops.rename(tmp, final)
        _fsync_dir(fops, qdir)
        current = seg_path
        _cut(fops, seg_path, torn.offset)
    except OSError as exc:
        raise _write_error(current, exc) from exc
    return final


def release_reserved(
    log_dir: str | os.PathLike[str], reserved: ReservedTail, *, fileops: FileOps | None = None
) -> None:
    """Cut the space a writer had reserved (NULs only, nothing anyone wrote) off the last
    segment, durably: the segment ends at its last record again, as after a clean stop."""
    fops = fileops or OS_FILEOPS
    seg_path = os.path.join(os.fspath(log_dir), reserved.segment)  # noqa: PTH118
    try:
        size = fops.size(seg_path)
        if size != reserved.offset + reserved.length:
            # No record was being written in reserved space, so there is no seq to name.
            raise LogDamaged(
                None,
                f"the segment changed since it was scanned ({size} bytes, "
                f"{reserved.offset + reserved.length} when scanned)",
                reserved.segment,
            )
        _cut(fops, seg_path, reserved.offset)
    except OSError as exc:
        raise _write_error(seg_path, exc) from exc


def _cut(fops: FileOps, path: str, offset: int) -> None:
    """Truncate `path` at `offset`, durably (a failed fsync is fatal)."""
    handle = fops.open_write(path)
    try:
        fops.ftruncate(handle, offset)
        _fsync(fops, handle, path)
    finally:
        fops.close(handle)


def _quarantine_name(fops: FileOps, qdir: str, stem: str, data: bytes) -> str:
    """`<stem>.torn`, unless it holds other bytes (an earlier crash tore the same offset): then
    the first `<stem>.<n>.torn` that is free or already holds these bytes (a repeated cut)."""
    names = set(fops.listdir(qdir))
    n = 0
    while True:
        name = f"{stem}.torn" if n == 0 else f"{stem}.{n}.torn"
        path = os.path.join(qdir, name)  # noqa: PTH118
        if name not in names or _holds(fops, path, data):
            return path
        n += 1


def _holds(fops: FileOps, path: str, data: bytes) -> bool:
    handle = fops.open_read(path)
    try:
        return fops.fstat_size(handle) == len(data) and fops.pread(handle, len(data), 0) == data
    finally:
        fops.close(handle)


def _fsync(fops: FileOps, handle: Handle, path: str) -> None:
    try:
        fops.fsync(handle)
    except OSError as exc:
        raise FatalStorageError(path, exc.errno or 0, exc.strerror or str(exc)) from exc


def _fsync_dir(fops: FileOps, path: str) -> None:
    try:
        fops.fsync_dir(path)
    except OSError as exc:
        raise FatalStorageError(path, exc.errno or 0, exc.strerror or str(exc)) from exc
