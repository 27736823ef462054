"""Linux inotify through ctypes, with the event mask chosen by the caller.

The verifier needs a mask that the daemon's own steady-state writes never match (see
`OUTSIDE_CHANGES`), so that its appends and commits cost no wake-up at all: the kernel filters
them. `watchfiles` (the Rust `notify` crate) always asks for IN_MODIFY, hence this module.
Linux only: `Inotify.open()` raises OSError where there is no inotify (other systems, seccomp
filters, a full `max_user_instances`); the caller falls back to polling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Every way an outside process changes a file, but for writing to a file it keeps open: the
# writer keeps its segment and its SQLite connection open, so its appends and commits raise
# IN_MODIFY alone. A writer that neither closes nor renames is left to a periodic check.
OUTSIDE_CHANGES = (
    IN_CLOSE_WRITE
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ATTRIB
    | IN_MOVE_SELF
)

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One inotify event: `name` is empty for an event on the watched directory itself."""

    wd: int
    mask: int
    name: str


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        raise OSError(errno.ENOSYS, "no C library to call inotify through")
    libc = ctypes.CDLL(name, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        raise OSError(errno.ENOSYS, "this C library has no inotify")
    return libc


class Inotify:
    """One inotify instance (non-blocking, close-on-exec); `close()` when done."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self._fd = fd
        self._libc = libc

    @classmethod
    def open(cls) -> Inotify:
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        return cls(fd, libc)

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch `path` for `mask`; returns the watch descriptor."""
        wd: int = self._libc.inotify_add_watch(self._fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}", str(path))
        return wd

    def read(self) -> list[Event]:
        """Every event queued now (empty when none: the descriptor is non-blocking)."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self._fd, _BUFFER)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                raw = data[offset : offset + length].rstrip(b"\0")
                offset += length
                events.append(Event(wd, mask, os.fsdecode(raw)))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
