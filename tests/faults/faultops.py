"""A `FileOps` on the real file system that fails the N-th operation of a kind, on demand.

Faults that cannot be caused for real (an fsync that fails, a full disk) are injected here, at
the one seam the log uses. Kinds: write, fsync, fsync_dir, rename, ftruncate, unlink, mkdir,
create (a new segment), open_new; "any" counts every one of them together.
"""

from __future__ import annotations

import errno
import os
from collections import Counter

from timelined.auditlog.fileops import Handle, OsFileOps

KINDS = (
    "write",
    "fsync",
    "fsync_dir",
    "rename",
    "ftruncate",
    "unlink",
    "mkdir",
    "create",
    "open_new",
)


class FaultOps(OsFileOps):
    """Fails the `nth` call of `kind` with `err` (every later one too when `sticky`).

    `partial`: the failing write first takes this many bytes (a short write), and the write
    after it raises: what a disk filling up mid-write looks like. `lift()` ends the fault.
    """

    def __init__(
        self,
        kind: str | None = None,
        nth: int = 0,
        err: int = errno.EIO,
        *,
        sticky: bool = False,
        partial: int = 0,
    ) -> None:
        if kind is not None and kind != "any" and kind not in KINDS:
            raise ValueError(kind)
        self.kind, self.nth, self.err = kind, nth, err
        self.sticky, self.partial = sticky, partial
        self.counts: Counter[str] = Counter()
        self.fired: list[str] = []
        self.lifted = False
        self._raise_next_write = False

    def lift(self) -> None:
        self.lifted = True
        self._raise_next_write = False

    def _hit(self, kind: str) -> bool:
        self.counts[kind] += 1
        self.counts["any"] += 1
        if self.lifted or self.kind not in (kind, "any"):
            return False
        n = self.counts[self.kind]
        return n == self.nth or (self.sticky and n > self.nth)

    def _fail(self, kind: str, what: object) -> OSError:
        self.fired.append(f"{kind} #{self.counts[kind]} {what}")
        return OSError(self.err, os.strerror(self.err))

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        if self._raise_next_write and not self.lifted:
            self._raise_next_write = False
            raise self._fail("write", handle)
        if self._hit("write"):
            if self.partial and len(data) > self.partial:
                self._raise_next_write = True
                self.fired.append(f"short write of {self.partial} bytes")
                return super().write(handle, memoryview(data)[: self.partial])
            raise self._fail("write", handle)
        return super().write(handle, data)

    def fsync(self, handle: Handle) -> None:
        if self._hit("fsync"):
            raise self._fail("fsync", handle)
        super().fsync(handle)

    def fsync_dir(self, path: str) -> None:
        if self._hit("fsync_dir"):
            raise self._fail("fsync_dir", path)
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        if self._hit("rename"):
            raise self._fail("rename", dst)
        super().rename(src, dst)

    def ftruncate(self, handle: Handle, length: int) -> None:
        if self._hit("ftruncate"):
            raise self._fail("ftruncate", handle)
        super().ftruncate(handle, length)

    def unlink(self, path: str) -> None:
        if self._hit("unlink"):
            raise self._fail("unlink", path)
        super().unlink(path)

    def mkdir(self, path: str) -> None:
        if self._hit("mkdir"):
            raise self._fail("mkdir", path)
        super().mkdir(path)

    def open_append(self, path: str, *, create: bool = False) -> Handle:
        if create and self._hit("create"):
            raise self._fail("create", path)
        return super().open_append(path, create=create)

    def open_new(self, path: str) -> Handle:
        if self._hit("open_new"):
            raise self._fail("open_new", path)
        return super().open_new(path)
