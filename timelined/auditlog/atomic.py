"""Crash-safe file writes: after a power cut the target holds the old file or the whole new one.

The one recipe, for every file timelined writes whole (reports, the clean-shutdown marker, the
damage record, exports, metrics scrapes): write a temporary file beside the target, fsync it,
rename it over the target, fsync the directory (without that the rename itself may be lost).
Every step goes through a `FileOps`, so the crash simulator enumerates the states each writer can
leave and the fault injector fails any step.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Self

from timelined.auditlog.fileops import OS_FILEOPS, FileOps, Handle, write_all

StrPath = str | os.PathLike[str]


def temp_name(path: StrPath) -> str:
    """The default temporary name: hidden, beside the target, one per process."""
    target = Path(path)
    return str(target.with_name(f".{target.name}.{os.getpid()}.tmp"))


class AtomicFile:
    """A new file written under a temporary name and given the target's name by `commit`.

    `mode` is filtered by the umask as open(2) does; `exact_mode` sets it as given (a file
    another user's program reads). Leaving the `with` block without `commit` (an exception, or
    none) removes the temporary file. OSErrors propagate unchanged: callers word them.
    """

    def __init__(
        self,
        path: StrPath,
        *,
        fileops: FileOps = OS_FILEOPS,
        mode: int = 0o640,
        exact_mode: bool = False,
        tmp: StrPath | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.tmp = os.fspath(tmp) if tmp is not None else temp_name(path)
        self._ops = fileops
        self._handle: Handle | None = fileops.open_new(self.tmp, mode)
        self._committed = False
        if exact_mode:
            try:
                fileops.fchmod(self._handle, mode)
            except BaseException:
                self.abort()
                raise

    def write(self, data: bytes | memoryview) -> None:
        if self._handle is None:
            raise ValueError(f"{self.tmp} is closed")
        write_all(self._ops, self._handle, data)

    def commit(self) -> None:
        """Make the content durable, then give it the target's name, durably."""
        if self._handle is None:
            raise ValueError(f"{self.tmp} is closed")
        handle, self._handle = self._handle, None
        try:
            self._ops.fsync(handle)
        finally:
            self._ops.close(handle)
        self._ops.rename(self.tmp, self.path)
        self._committed = True
        self._ops.fsync_dir(str(Path(self.path).parent))

    def abort(self) -> None:
        """Close and remove the temporary file (quietly: the error that got us here matters)."""
        if self._committed:
            return
        handle, self._handle = self._handle, None
        try:
            if handle is not None:
                self._ops.close(handle)
            self._ops.unlink(self.tmp)
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


def write_file_atomic(
    path: StrPath,
    data: bytes | memoryview,
    *,
    fileops: FileOps = OS_FILEOPS,
    mode: int = 0o640,
    exact_mode: bool = False,
    tmp: StrPath | None = None,
) -> None:
    """Replace `path` by `data`, whole or not at all after a crash (see `AtomicFile`)."""
    with AtomicFile(path, fileops=fileops, mode=mode, exact_mode=exact_mode, tmp=tmp) as f:
        f.write(data)
        f.commit()


def make_dirs(path: StrPath, fileops: FileOps = OS_FILEOPS) -> None:
    """`mkdir -p` whose new entries are durable (each parent directory fsynced)."""
    missing: list[Path] = []
    here = Path(path)
    while not here.exists():
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        try:
            fileops.mkdir(str(directory))
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile (another thread): its maker fsyncs the parent
        fileops.fsync_dir(str(directory.parent))


def fsync_path(path: StrPath, fileops: FileOps = OS_FILEOPS) -> None:
    """fsync a file written by something that does not fsync (SQLite without a journal)."""
    handle = fileops.open_read(os.fspath(path))
    try:
        fileops.fsync(handle)
    finally:
        fileops.close(handle)
