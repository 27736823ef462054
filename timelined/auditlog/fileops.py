"""The one seam between the audit log and the file system.

Every file operation the log performs goes through a `FileOps`: tests swap in one that fails the
N-th fsync with EIO, refuses a write with ENOSPC, or records every call to enumerate the states a
crash could leave. Whole-file writes (reports, the marker) go through `atomic.py` on top of it.
Operations are fd-based and explicit (no buffered file objects) so that a fake
sees exactly what reaches the kernel, in order.

Errors are the `OSError`s the `os` functions raise; callers translate them into timelined errors.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

Handle = int  # an open file: a real fd for OsFileOps, any int a fake chooses


class FileOps(Protocol):
    """The file operations the log uses; paths are plain strings."""

    def open_append(self, path: str, *, create: bool = False) -> Handle:
        """Open for appending; `create` makes a new file and fails if it already exists."""
        ...

    def open_write(self, path: str, *, create: bool = False) -> Handle:
        """Open for writing at explicit offsets (`pwrite`; no O_APPEND: Linux's pwrite would
        append regardless of its offset); `create` makes a new file and fails if it exists."""
        ...

    def open_new(self, path: str, mode: int = 0o640) -> Handle:
        """Create (or empty) a file for writing; `mode` is filtered by the umask, as open(2)."""
        ...

    def open_read(self, path: str) -> Handle: ...

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        """One write(2): may write fewer bytes than given; returns how many it wrote."""
        ...

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        """One pwrite(2) at `offset`: may write fewer bytes than given; returns how many."""
        ...

    def pread(self, handle: Handle, size: int, offset: int) -> bytes: ...

    def reserve(self, handle: Handle, offset: int, length: int) -> None:
        """posix_fallocate(3): allocate [offset, offset+length), growing the file (the new
        bytes read as zeros); ENOSPC/EDQUOT when the disk cannot hold them."""
        ...

    def fsync(self, handle: Handle) -> None: ...

    def fdatasync(self, handle: Handle) -> None:
        """The data and the metadata needed to read it back (the size), not the times."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (a created, renamed or removed file) durable."""
        ...

    def ftruncate(self, handle: Handle, length: int) -> None: ...

    def fchmod(self, handle: Handle, mode: int) -> None:
        """Set the permissions exactly (not filtered by the umask)."""
        ...

    def close(self, handle: Handle) -> None: ...

    def fstat_size(self, handle: Handle) -> int: ...

    def size(self, path: str) -> int: ...

    def listdir(self, path: str) -> list[str]: ...

    def mkdir(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def unlink(self, path: str) -> None: ...


class OsFileOps:
    """`FileOps` on the real file system through `os`."""

    def open_append(self, path: str, *, create: bool = False) -> Handle:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags, 0o640)

    def open_write(self, path: str, *, create: bool = False) -> Handle:
        flags = os.O_WRONLY | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags, 0o640)

    def open_new(self, path: str, mode: int = 0o640) -> Handle:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)

    def open_read(self, path: str) -> Handle:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        return os.write(handle, data)

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(handle, data, offset)

    def pread(self, handle: Handle, size: int, offset: int) -> bytes:
        return os.pread(handle, size, offset)

    def reserve(self, handle: Handle, offset: int, length: int) -> None:
        os.posix_fallocate(handle, offset, length)

    def fsync(self, handle: Handle) -> None:
        os.fsync(handle)

    def fdatasync(self, handle: Handle) -> None:
        os.fdatasync(handle)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ftruncate(self, handle: Handle, length: int) -> None:
        os.ftruncate(handle, length)

    def fchmod(self, handle: Handle, mode: int) -> None:
        os.fchmod(handle, mode)

    def close(self, handle: Handle) -> None:
        os.close(handle)

    def fstat_size(self, handle: Handle) -> int:
        return os.fstat(handle).st_size

    def size(self, path: str) -> int:
        return Path(path).stat().st_size

    def listdir(self, path: str) -> list[str]:
        return [entry.name for entry in os.scandir(path)]

    def mkdir(self, path: str) -> None:
        Path(path).mkdir(mode=0o750)

    def rename(self, src: str, dst: str) -> None:
        Path(src).rename(dst)

    def unlink(self, path: str) -> None:
        Path(path).unlink()


OS_FILEOPS = OsFileOps()


def write_all(
    fileops: FileOps, handle: Handle, data: bytes | memoryview, offset: int | None = None
) -> None:
    """Write every byte, continuing after short writes; a write of 0 bytes is ENOSPC. With an
    `offset`, pwrite(2) from there on (a handle opened by `open_write`), else write(2)."""
    view = memoryview(data)
    while view:
        n = fileops.write(handle, view) if offset is None else fileops.pwrite(handle, view, offset)
        if n <= 0:
            # write(2) returning 0 for a non-empty buffer means the device took nothing more.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
        if offset is not None:
            offset += n
