"""The log's single writer: one pwrite and (per `log.fsync`) one fdatasync per batch.

Space reserved ahead (issue 17): the last segment's file is grown with posix_fallocate a chunk
(`reserve_bytes`, 4 MiB) at a time past its logical end (`_size`, where the next record goes),
and each batch is written into that space. Its size then does not change per batch, so its
fdatasync writes the data alone: one device round trip instead of two (data, then the inode
for the new size). At rest the format is unchanged: a rotation cuts the old segment back to
its logical end (and syncs it) before the next one is created, and a clean `close` cuts the
last one; only after a crash may the last segment end in a run of NUL bytes, which the boot
releases (docs/log-format.md, "Torn tail and damage").

Failure rules (docs/log-format.md, "Durability"):

- a write that fails (ENOSPC or any other error, including a short write that cannot be
  completed) is undone: the segment is truncated back to its size before the batch, or removed
  if it was created for the batch, and that undo is made durable. The head does not move, the
  caller gets `DiskFull` / `StorageError`, and the writer stays usable;
- an fsync that fails is fatal: the kernel may have dropped the dirty pages and a retried fsync
  can report success for data that is gone (PostgreSQL, 2018). The writer raises
  `FatalStorageError` and refuses every later call with it; the daemon must exit and recover
  from the log.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from timelined.auditlog.fileops import OS_FILEOPS, FileOps, Handle, write_all
from timelined.auditlog.reader import content_end
from timelined.auditlog.record import GENESIS_PREV
from timelined.auditlog.segments import list_segments, segment_name
from timelined.config import FsyncMode
from timelined.errors import DiskFull, FatalStorageError, LogDamaged, StorageError

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True)
class LogHead:
    """Where the log ends: last seq and hash, and the byte length of the last segment."""

    seq: int = 0
    hash: str = GENESIS_PREV
    end_offset: int = 0


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters for metrics; `durable_seq` is the last seq known to be fsynced."""

    head_seq: int
    head_hash: str
    durable_seq: int
    segment: str | None
    segment_size: int
    writes: int
    bytes_written: int
    fsyncs: int
    dir_fsyncs: int
    rotations: int
    write_errors: int
    last_fsync_seconds: float
    failed: bool
    segment_reserved: int = 0  # the segment file's real size: its logical size + reserved space
    reservations: int = 0
    # The segment being created for a batch, until `segment` names it (LogWatch: the writer's).
    creating: str | None = None


class LogWriter:
    """Appends batches of encoded lines to the log directory's last segment.

    Thread-safe: the engine writes from its worker thread while a timer may call `sync_if_due`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        head: LogHead,
        *,
        fileops: FileOps | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: FsyncMode = "always",
        fsync_interval_ms: int = 50,
        on_fsync: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        if fsync not in ("always", "interval", "off"):
            raise ValueError(f"unknown fsync mode {fsync!r}")
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        if reserve_bytes < 0:
            raise ValueError("reserve_bytes must not be negative")
        self._fops = fileops or OS_FILEOPS
        self._dir = os.fspath(log_dir)
        self._segment_bytes = segment_bytes
        self._mode: FsyncMode = fsync
        self._interval = fsync_interval_ms / 1000.0
        self._on_fsync = on_fsync
        self._clock = clock
        self._lock = threading.Lock()
        self._handle: Handle | None = None
        self._path: str | None = None
        self._size = 0  # the logical end: where the next batch goes
        self._reserved = 0  # the file's real size: _size plus the space reserved past it
        # Without fsyncs there is no inode write to save: "off" never reserves.
        self._reserve_bytes = reserve_bytes if fsync != "off" else 0
        # Not reserving, the writer appends with O_APPEND as before issue 17: a stranger's
        # bytes appended meanwhile stay where they are (LogWatch sees the size it did not
        # write) instead of being overwritten by the next batch's pwrite at the logical end.
        self._append = not self._reserve_bytes
        self._reservations = 0
        self._head_seq = head.seq
        self._head_hash = head.hash
        self._durable_seq = head.seq  # what the boot found on disk
        self._dirty = False
        self._last_sync = clock()
        self._failure: tuple[str, int, str] | None = None
        self._closed = False
        self._writes = self._bytes = self._fsyncs = self._dir_fsyncs = 0
        self._rotations = self._write_errors = 0
        self._creating: str | None = None
        self._last_fsync_seconds = 0.0
        self._open(head)

    # --- opening -------------------------------------------------------------------------------

    def _open(self, head: LogHead) -> None:
        fops = self._fops
        try:
            fops.listdir(self._dir)
        except FileNotFoundError:
            self._make_dir()
        except OSError as exc:
            raise _write_error(self._dir, exc) from exc
        segments = list_segments(self._dir, fops)
        if not segments:
            if head.seq != 0 or head.end_offset != 0:
                raise LogDamaged(head.seq, "the log has no segment but its head is past seq 0")
            return
        last = segments[-1]
        if last.first_seq > head.seq + 1:
            raise LogDamaged(head.seq + 1, "the last segment starts past the head", last.name)
        try:
            handle = self._open_file(last.path)
        except OSError as exc:
            raise _write_error(last.path, exc) from exc
        try:
            real = fops.fstat_size(handle)
            # A run of NULs past the head is space a run that did not stop cleanly reserved
            # (the boot releases it; an engine opened without a boot keeps it as its own, or
            # cuts it when it appends without reserving).
            size = head.end_offset if _nul_tail(fops, last.path, head.end_offset, real) else real
            if self._append and size < real:
                fops.ftruncate(handle, size)
                real = size
        except OSError as exc:
            fops.close(handle)
            raise _write_error(last.path, exc) from exc
        # An empty last segment must be the one the next record starts; a non-empty one must
        # end exactly where the scan found the last good record.
        if size != head.end_offset or ((last.first_seq == head.seq + 1) != (size == 0)):
            fops.close(handle)
            raise LogDamaged(
                head.seq + 1,
                f"the last segment holds {size} bytes but the head ends at {head.end_offset}",
                last.name,
            )
        self._handle, self._path, self._size, self._reserved = handle, last.path, size, real

    def _make_dir(self) -> None:
        try:
            self._fops.mkdir(self._dir)
        except OSError as exc:
            raise _write_error(self._dir, exc) from exc
        if self._mode != "off":
            parent = os.path.dirname(os.path.abspath(self._dir))  # noqa: PTH100, PTH120
            self._fsync_dir(parent)

    # --- the public API ------------------------------------------------------------------------

    def write_batch(self, data: bytes, first_seq: int, last_seq: int, last_hash: str) -> None:
        """Append a batch's lines (seq first_seq … last_seq) with one pwrite at the logical end
        (into reserved space, reserving the next chunk first when it does not fit), then sync
        per mode.

        Raises DiskFull / StorageError with nothing of the batch kept (the writer stays usable),
        or FatalStorageError (the writer is failed for good).
        """
        with self._lock:
            self._check_usable()
            if first_seq != self._head_seq + 1 or last_seq < first_seq:
                raise ValueError(
                    f"batch {first_seq}..{last_seq} does not follow the head {self._head_seq}"
                )
            if data[-1:] != b"\n":
                raise ValueError("a batch must be whole lines")
            handle, path, before = self._handle, self._path, self._size
            created = False
            try:
                if handle is None or path is None or before >= self._segment_bytes:
                    if handle is not None:
                        # Only the last segment may ever hold a torn tail or reserved space:
                        # cut the old one back to its records and sync it before the next one
                        # exists.
                        self._seal_locked()
                    self._creating = segment_name(first_seq)  # named before the file exists
                    handle, path = self._create_segment(first_seq)
                    before, created = 0, True
                reserved = 0 if created else self._reserved
                if self._reserve_bytes and before + len(data) > reserved:
                    reserved = self._reserve(handle, path, before, len(data), created, reserved)
                try:
                    write_all(self._fops, handle, data, None if self._append else before)
                except OSError as exc:
                    self._write_errors += 1
                    self._roll_back(handle, path, before, created)
                    raise _write_error(path, exc) from exc
                if created:
                    self._switch_to(handle, path)
            finally:
                self._creating = None
            self._size = before + len(data)
            self._reserved = max(reserved, self._size)
            self._head_seq, self._head_hash = last_seq, last_hash
            self._writes += 1
            self._bytes += len(data)
            self._dirty = True
            if self._mode == "always" or (
                self._mode == "interval" and self._clock() - self._last_sync >= self._interval
            ):
                self._fsync_locked()

    def sync_due(self) -> bool:
        """In "interval" mode, whether anything is unsynced and the interval has passed (a
        check without the lock, for a caller that hands `sync_if_due` to another thread only
        when there is an fsync to do; `sync_if_due` checks again under the lock)."""
        return (
            self._mode == "interval"
            and self._dirty
            and self._clock() - self._last_sync >= self._interval
        )

    def sync_if_due(self) -> bool:
        """In "interval" mode, fsync if anything is unsynced and the interval has passed."""
        with self._lock:
            self._check_usable()
            if not self.sync_due():
                return False
            self._fsync_locked()
            return True

    def sync(self) -> None:
        """fsync now if anything is unsynced (never in "off" mode)."""
        with self._lock:
            self._check_usable()
            if self._dirty and self._mode != "off":
                self._fsync_locked()

    def close(self) -> None:
        """Cut the reserved space, sync (unless "off") and close: at rest after a clean stop the
        segment ends at its last record. A failed writer closes its file and raises again
        (its reserved space stays: the boot releases it)."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._failure is None and self._handle is not None:
                    self._seal_locked()
            finally:
                self._closed = True
                if self._handle is not None:
                    try:
                        self._fops.close(self._handle)
                    except OSError:
                        pass  # nothing left to protect: data was synced or the writer failed
                    self._handle = None
            self._check_failed()

    # --- state for the engine and metrics -------------------------------------------------------

    @property
    def head_seq(self) -> int:
        return self._head_seq

    @property
    def head_hash(self) -> str:
        return self._head_hash

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def segment_path(self) -> str | None:
        return self._path

    @property
    def segment_size(self) -> int:
        return self._size

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def last_fsync_seconds(self) -> float:
        return self._last_fsync_seconds

    @property
    def head(self) -> LogHead:
        return LogHead(self._head_seq, self._head_hash, self._size)

    def stats(self) -> WriterStats:
        """A snapshot for metrics, read without the lock (an fsync may hold it for a while)."""
        return WriterStats(
            head_seq=self._head_seq,
            head_hash=self._head_hash,
            durable_seq=self._durable_seq,
            segment=os.path.basename(self._path) if self._path else None,  # noqa: PTH119
            segment_size=self._size,
            segment_reserved=self._reserved,
            reservations=self._reservations,
            creating=self._creating,
            writes=self._writes,
            bytes_written=self._bytes,
            fsyncs=self._fsyncs,
            dir_fsyncs=self._dir_fsyncs,
            rotations=self._rotations,
            write_errors=self._write_errors,
            last_fsync_seconds=self._last_fsync_seconds,
            failed=self._failure is not None,
        )

    # --- internals -----------------------------------------------------------------------------

    def _check_failed(self) -> None:
        if self._failure is not None:
            raise FatalStorageError(*self._failure)

    def _check_usable(self) -> None:
        self._check_failed()
        if self._closed:
            raise ValueError("the log writer is closed")

    def _fail(self, path: str, exc: OSError, doing: str = "") -> FatalStorageError:
        strerror = exc.strerror or str(exc)
        self._failure = (path, exc.errno or 0, f"{strerror}{doing}")
        return FatalStorageError(*self._failure)

    def _fsync_locked(self) -> None:
        assert self._handle is not None and self._path is not None
        start = time.perf_counter()
        try:
            # fdatasync is enough: what a reader needs is the data and the size that makes it
            # readable (fdatasync writes a changed size: a reservation's, a cut's, a growing
            # append's); the mtime it skips is nothing the log or its boot relies on. Into
            # reserved space the size does not change: the data is the sync's only write.
            self._fops.fdatasync(self._handle)
        except OSError as exc:
            raise self._fail(self._path, exc) from exc
        elapsed = time.perf_counter() - start
        self._fsyncs += 1
        self._last_fsync_seconds = elapsed
        self._durable_seq = self._head_seq
        self._dirty = False
        self._last_sync = self._clock()
        if self._on_fsync is not None:
            self._on_fsync(elapsed)

    def _fsync_dir(self, path: str) -> None:
        try:
            self._fops.fsync_dir(path)
        except OSError as exc:
            raise self._fail(path, exc) from exc
        self._dir_fsyncs += 1

    def _open_file(self, path: str, *, create: bool = False) -> Handle:
        if self._append:
            return self._fops.open_append(path, create=create)
        return self._fops.open_write(path, create=create)

    def _seal_locked(self) -> None:
        """Cut the segment back to its logical end (if space is reserved past it) and sync it
        (unless "off"): before a rotation, so that only the last segment can hold anything but
        whole records, and at a clean close, so that the log at rest is plain lines."""
        assert self._handle is not None and self._path is not None
        cut = self._reserved > self._size
        if cut:
            try:
                found = self._fops.fstat_size(self._handle)
                if found != self._reserved:
                    # Someone else appended or cut: the cut must not destroy their bytes (the
                    # boot keeps them in quarantine, LogWatch has reported them).
                    why = f"the file holds {found} bytes, the writer left {self._reserved}"
                    raise OSError(errno.EIO, why)
                self._fops.ftruncate(self._handle, self._size)
            except OSError as exc:
                raise self._fail(self._path, exc, " (while releasing reserved space)") from exc
            self._reserved = self._size
        if (self._dirty or cut) and self._mode != "off":
            self._fsync_locked()

    def _reserve(
        self, handle: Handle, path: str, before: int, need: int, created: bool, have: int
    ) -> int:
        """Reserve a chunk (or the batch's size, if larger) from the logical end `before`;
        returns the file's new size. A disk that cannot hold it refuses the batch with nothing
        written and the file as it was (cut back to `before`, durably); a file system without
        fallocate makes the writer append without reserving from now on. A file whose size is
        not the `have` this writer left refuses the batch too: someone else wrote or cut it,
        and the batch's pwrite must not overwrite what a stranger appended (LogWatch reports
        it; the next boot keeps the stranger's bytes in quarantine, a torn tail)."""
        fops = self._fops
        try:
            found = fops.fstat_size(handle)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if found != have:
            self._write_errors += 1
            raise StorageError(
                path, errno.EIO, f"the file holds {found} bytes, the writer left {have}"
            )
        length = max(self._reserve_bytes, need)
        while True:
            try:
                fops.reserve(handle, before, length)
                break
            except OSError as exc:
                if exc.errno in _NO_FALLOCATE:
                    self._reserve_bytes = 0
                    return 0 if created else self._reserved
                if exc.errno in _FULL and length > need:
                    length = need  # a nearly full disk still takes what fits
                    continue
                self._write_errors += 1
                self._roll_back(handle, path, before, created)
                raise _write_error(path, exc) from exc
        self._reservations += 1
        try:
            # The real size: a chunk refused part way may have grown the file past `length`.
            return fops.fstat_size(handle)
        except OSError as exc:
            raise self._fail(path, exc, " (after reserving space)") from exc

    def _create_segment(self, first_seq: int) -> tuple[Handle, str]:
        path = os.path.join(self._dir, segment_name(first_seq))  # noqa: PTH118
        try:
            handle = self._open_file(path, create=True)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if self._mode != "off":
            try:
                self._fsync_dir(self._dir)
            except FatalStorageError:
                self._fops.close(handle)
                raise
        return handle, path

    def _switch_to(self, handle: Handle, path: str) -> None:
        if self._handle is not None:
            try:
                self._fops.close(self._handle)
            except OSError:
                pass  # the old segment was synced before rotating; close errors change nothing
        self._handle, self._path = handle, path
        self._rotations += 1

    def _roll_back(self, handle: Handle, path: str, before: int, created: bool) -> None:
        """Undo a failed write durably, so that a crash cannot bring refused lines back."""
        fops = self._fops
        try:
            if created:
                fops.close(handle)
                fops.unlink(path)
                if self._mode != "off":
                    self._fsync_dir(self._dir)
                return
            fops.ftruncate(handle, before)
        except OSError as exc:
            raise self._fail(path, exc, " (while undoing a refused write)") from exc
        self._reserved = before
        if self._mode != "off":
            self._fsync_locked()


def _nul_tail(fops: FileOps, path: str, start: int, end: int) -> bool:
    """Whether the bytes [start, end) of `path` are a non-empty run of NULs (reserved space)."""
    if end <= start:
        return False
    handle = fops.open_read(path)  # the writer's own handle is write-only
    try:
        return content_end(fops, handle, start, end) == start
    finally:
        fops.close(handle)


def _write_error(path: str, exc: OSError) -> DiskFull | StorageError:
    if exc.errno in _FULL:
        return DiskFull(path)
    return StorageError(path, exc.errno or 0, exc.strerror or str(exc))
