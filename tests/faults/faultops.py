"""The fault injector: a `FileOps` on the real file system that counts calls and fails on demand.

Faults that cannot be caused for real (an fsync that fails, a full disk) are injected here, at
the one seam every file write goes through. Two ways, combinable:

- an armed fault: the N-th call of a kind fails with an errno (every later one too when
  sticky). Kinds: write (write and pwrite), fsync (fsync and fdatasync), fsync_dir, rename,
  ftruncate, unlink, mkdir, create (a new segment), open_new, fchmod, reserve; "sync" counts
  fsync and fsync_dir together; "any" counts every one of them together.
- a full disk: `space` is how many more bytes the disk takes; a write past it is short, the
  next raises ENOSPC; a reservation past it grows the file by what fits, then raises ENOSPC
  (as a fallocate that ran out part way). Writing into reserved space takes no more.

`calls` counts every call by kind (and "sync", "any"); `opened` lists the files opened for
reading, by name; `fired` says what failed.
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
    "fchmod",
    "reserve",
)
GROUPS = {"any": KINDS, "sync": ("fsync", "fsync_dir")}


class FaultOps(OsFileOps):
    """Fails the `nth` call of `kind` with `err` (every later one too when `sticky`).

    `partial`: the failing write first takes this many bytes (a short write), and the write
    after it raises: what a disk filling up mid-write looks like. `arm()` sets a fault counted
    from now; `lift()` ends it.
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
        self.calls: Counter[str] = Counter()
        self.opened: list[str] = []
        self.fired: list[str] = []
        self.space: int | None = None
        self.kind: str | None = None
        self.arm(kind, nth, err, sticky=sticky, partial=partial)

    def arm(
        self,
        kind: str | None,
        nth: int = 1,
        err: int = errno.EIO,
        *,
        sticky: bool = False,
        partial: int = 0,
    ) -> None:
        """Fail the `nth` call of `kind` counted from now (None: no fault)."""
        if kind is not None and kind not in KINDS and kind not in GROUPS:
            raise ValueError(kind)
        self.kind, self.err = kind, err
        self.nth = nth + (self.calls[kind] if kind is not None else 0)
        self.sticky, self.partial = sticky, partial
        self.lifted = False
        self._raise_next_write = False

    def lift(self) -> None:
        self.lifted = True
        self._raise_next_write = False

    def _hit(self, kind: str) -> bool:
        self.calls[kind] += 1
        for group, members in GROUPS.items():
            if kind in members:
                self.calls[group] += 1
        if self.lifted or self.kind is None:
            return False
        if self.kind != kind and kind not in GROUPS.get(self.kind, ()):
            return False
        n = self.calls[self.kind]
        return n == self.nth or (self.sticky and n > self.nth)

    def _fail(self, kind: str, what: object, code: int | None = None) -> OSError:
        self.fired.append(f"{kind} #{self.calls[kind]} {what}")
        code = self.err if code is None else code
        return OSError(code, os.strerror(code))

    def _write_fault(self, handle: Handle, data: bytes | memoryview) -> memoryview | None:
        """The armed fault of a write or pwrite: raises, or gives the short prefix to write
        (the next write raises); None when no fault is due."""
        if self._raise_next_write and not self.lifted:
            self._raise_next_write = False
            raise self._fail("write", handle)
        if self._hit("write"):
            if self.partial and len(data) > self.partial:
                self._raise_next_write = True
                self.fired.append(f"short write of {self.partial} bytes")
                return memoryview(data)[: self.partial]
            raise self._fail("write", handle)
        return None

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        short = self._write_fault(handle, data)
        if short is not None:
            return super().write(handle, short)
        if self.space is not None:
            if self.space == 0:
                raise self._fail("write", handle, errno.ENOSPC)
            data = memoryview(data)[: self.space]
            self.space -= len(data)
        return super().write(handle, data)

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        short = self._write_fault(handle, data)
        if short is not None:
            return super().pwrite(handle, short, offset)
        if self.space is not None:
            room = max(self.fstat_size(handle) - offset, 0) + self.space
            if room <= 0:
                raise self._fail("write", handle, errno.ENOSPC)
            data = memoryview(data)[:room]
            self.space -= max(offset + len(data) - self.fstat_size(handle), 0)
        return super().pwrite(handle, data, offset)

    def reserve(self, handle: Handle, offset: int, length: int) -> None:
        self.calls["reserve_bytes"] += length
        if self._hit("reserve"):
            raise self._fail("reserve", handle)
        if self.space is not None:
            grow = offset + length - self.fstat_size(handle)
            if grow > self.space:
                if self.space:
                    super().reserve(handle, self.fstat_size(handle), self.space)
                self.space = 0
                raise self._fail("reserve", handle, errno.ENOSPC)
            self.space -= max(grow, 0)
        super().reserve(handle, offset, length)

    def fdatasync(self, handle: Handle) -> None:
        if self._hit("fsync"):
            raise self._fail("fsync", handle)  # counted and named as the fsync it replaces
        self.calls["fdatasync"] += 1
        super().fdatasync(handle)

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

    def fchmod(self, handle: Handle, mode: int) -> None:
        if self._hit("fchmod"):
            raise self._fail("fchmod", handle)
        super().fchmod(handle, mode)

    def unlink(self, path: str) -> None:
        if self._hit("unlink"):
            raise self._fail("unlink", path)
        super().unlink(path)

    def mkdir(self, path: str) -> None:
        if self._hit("mkdir"):
            raise self._fail("mkdir", path)
        super().mkdir(path)

    def open_append(self, path: str, *, create: bool = False) -> Handle:
        if create:
            if self._hit("create"):
                raise self._fail("create", path)
        else:
            self.calls["open_append"] += 1
        return super().open_append(path, create=create)

    def open_write(self, path: str, *, create: bool = False) -> Handle:
        if create:
            if self._hit("create"):
                raise self._fail("create", path)
        else:
            self.calls["open_write"] += 1
        return super().open_write(path, create=create)

    def open_new(self, path: str, mode: int = 0o640) -> Handle:
        if self._hit("open_new"):
            raise self._fail("open_new", path)
        return super().open_new(path, mode)

    def open_read(self, path: str) -> Handle:
        self.calls["open_read"] += 1
        self.opened.append(os.path.basename(path))
        return super().open_read(path)
