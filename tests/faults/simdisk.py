"""A simulated disk: a `FileOps` that records every operation and enumerates crash states.

The method of SQLite's crash tests and of ALICE (Pillai et al., OSDI 2014): the workload runs on
a real directory (so SQLite, readers and `Path` calls see real files), while every file operation
of the audit log goes through `SimDisk`, which keeps a model of what a power cut could leave:

- per file (inode): the *durable* bytes (as of its last fsync) and the *pending* operations since
  (writes at an offset, truncates; a reservation (posix_fallocate) is a size change whose new
  bytes read as zeros, recorded as a growing truncate). An fsync or fdatasync makes the current
  bytes and size durable (fdatasync skips only the times, which are not modelled).
- per directory: the *durable* entries (as of its last directory fsync) and the *pending* entry
  operations since (a created file, a mkdir, a rename, an unlink). A new name survives a crash only
  once its directory is fsynced; a file's own fsync does not make its name durable (POSIX).

Before each mutating operation (and once at the end) the model is snapshotted: a **crash point**.
`crash_states(point)` turns a crash point into a bounded, deterministic list of the file trees a
POSIX file system may leave after a power cut there:

- every pending data operation kept / dropped; op-level prefixes (the file's size at each
  write); a truncate lost while the writes around it were kept (a size change reordered; a
  plain write is never dropped alone with later ones kept: its exact byte range as a hole is
  not a state, the sector holes below are), with the sector variants below of that content;
- the unsynced region torn at each 512-byte boundary, a single 512-byte-aligned piece missing
  (reordered sector writes: the file grew but that sector never reached the platter, reading as
  zeros), the unsynced region filled with zeros, or with garbage;
- writes into space the file already had (reserved): the file keeps its size and each sector
  of the unsynced writes holds the new bytes or the old ones (zeros in reserved space): torn
  at each sector, one sector missing, none written;
- every pending directory operation kept / dropped, each one lost alone (a lost rename or
  creation while later ones made it), and each prefix of them (the later ones lost).

Only the audit log's files go through `FileOps`; paths for which `untracked(relpath)` is true
(SQLite's files, the lock, the reports) pass straight through and are not modelled. The SQLite
state is modelled separately and honestly: at every crash point the suite knows the database as
of the last completed COMMIT (`SimDisk` takes a consistent snapshot through a reader connection
whenever `PRAGMA data_version` moves), and a test runs each crash state with that snapshot, with
an older one, and with no database at all.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from timelined.auditlog.fileops import Handle

SECTOR = 512


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataOp:
    """One change to a file's bytes: a write of `data` at `offset`, or a truncate to `offset`."""

    kind: Literal["write", "truncate"]
    offset: int
    data: bytes = b""


def apply_data(content: bytes, op: DataOp) -> bytes:
    if op.kind == "truncate":
        if op.offset <= len(content):
            return content[: op.offset]
        return content + bytes(op.offset - len(content))
    if op.offset > len(content):
        content = content + bytes(op.offset - len(content))
    return content[: op.offset] + op.data + content[op.offset + len(op.data) :]


@dataclass(frozen=True, slots=True)
class Inode:
    durable: bytes
    current: bytes
    pending: tuple[DataOp, ...] = ()

    def change(self, op: DataOp) -> Inode:
        return Inode(self.durable, apply_data(self.current, op), (*self.pending, op))

    def synced(self) -> Inode:
        return Inode(self.current, self.current)


@dataclass(frozen=True, slots=True)
class FileEntry:
    ino: int


@dataclass(frozen=True, slots=True)
class DirEntry:
    path: str  # relative to the root; "" is the root


Entry = FileEntry | DirEntry


@dataclass(frozen=True, slots=True)
class DirOp:
    """Changes to one directory's entries made by one operation (None removes the name).

    `op_id` is the trace index of the operation; a rename across directories is two DirOps with
    the same id, which crash states keep or lose together.
    """

    op_id: int
    changes: tuple[tuple[str, Entry | None], ...]


def apply_dir(entries: dict[str, Entry], op: DirOp) -> None:
    for name, entry in op.changes:
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry


@dataclass(frozen=True, slots=True)
class Directory:
    durable: Mapping[str, Entry]
    current: Mapping[str, Entry]
    pending: tuple[DirOp, ...] = ()

    def change(self, op: DirOp) -> Directory:
        current = dict(self.current)
        apply_dir(current, op)
        return Directory(self.durable, current, (*self.pending, op))

    def synced(self) -> Directory:
        return Directory(dict(self.current), dict(self.current))


@dataclass(frozen=True, slots=True)
class Image:
    """The model at one moment: every inode and directory, durable and pending."""

    inodes: Mapping[int, Inode]
    dirs: Mapping[str, Directory]


@dataclass(frozen=True, slots=True)
class TraceOp:
    index: int
    kind: str  # create, open_new, write, reserve, fsync, fdatasync, fsync_dir, ftruncate, ...
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"#{self.index} {self.kind} {self.path}{' ' + self.detail if self.detail else ''}"


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """A power cut just before trace op `index` (or after the last op, when `op` is None)."""

    index: int
    op: TraceOp | None
    image: Image
    db: int | None  # index into SimDisk.db_snapshots: the state as of the last COMMIT

    def describe(self) -> str:
        return f"before {self.op}" if self.op is not None else f"after all {self.index} ops"


@dataclass(frozen=True, slots=True)
class CrashState:
    """One file tree a crash at a point may leave (untracked files not included)."""

    name: str
    files: Mapping[str, bytes]
    dirs: frozenset[str]

    @property
    def key(self) -> str:
        h = hashlib.sha256()
        for d in sorted(self.dirs):
            h.update(b"D" + d.encode() + b"\0")
        for path in sorted(self.files):
            h.update(b"F" + path.encode() + b"\0")
            h.update(hashlib.sha256(self.files[path]).digest())
        return h.hexdigest()

    def materialise(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for d in sorted(self.dirs, key=len):
            if d:
                (dest / d).mkdir(exist_ok=True)
        for path, data in self.files.items():
            (dest / path).write_bytes(data)


def default_untracked(rel: str) -> bool:
    """SQLite's files, the lock and the reports are not the log's: they are not modelled."""
    name = rel.rsplit("/", 1)[-1]
    first = rel.split("/", 1)[0]
    return (
        first == "reports"
        or rel == "lock"
        or name.startswith("state.db")
        or (first == "quarantine" and name.startswith("state-"))
    )


# --- the FileOps ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Open:
    rel: str
    ino: int | None  # None: untracked
    append: bool
    pos: int = 0


class SimDisk:
    """A recording `FileOps` over a real directory; see the module docstring.

    `db_path`: the SQLite state database whose committed content is snapshotted at every crash
    point. Real fsyncs are skipped: durability is what the model says, not what the host does.
    """

    def __init__(
        self,
        root: Path,
        *,
        db_path: Path | None = None,
        untracked: Callable[[str], bool] = default_untracked,
    ) -> None:
        self.root = os.path.abspath(root)
        self.untracked = untracked
        self.db_path = db_path
        self.trace: list[TraceOp] = []
        self.points: list[CrashPoint] = []
        self.db_snapshots: list[bytes] = []
        self.adopted: list[str] = []  # paths met that the model had not seen created
        self._inodes: dict[int, Inode] = {}
        self._dirs: dict[str, Directory] = {}
        self._open: dict[Handle, _Open] = {}
        self._next_ino = 1
        self._db_conn: sqlite3.Connection | None = None
        self._db_ident: tuple[int, int] | None = None
        self._db_version: int | None = None
        self._finished = False
        self._scan_existing("")

    # --- bookkeeping ----------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        full = os.path.abspath(path)
        if full == self.root:
            return ""
        if not full.startswith(self.root + os.sep):
            raise ValueError(f"{path} is outside the simulated disk {self.root}")
        return full[len(self.root) + 1 :]

    def _tracked(self, rel: str) -> bool:
        return not self.untracked(rel)

    @staticmethod
    def _split(rel: str) -> tuple[str, str]:
        parent, _, name = rel.rpartition("/")
        return parent, name

    def _new_ino(self, content: bytes) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._inodes[ino] = Inode(content, content)
        return ino

    def _scan_existing(self, rel: str) -> None:
        """Everything already on disk when the simulation starts is durable."""
        full = os.path.join(self.root, rel) if rel else self.root
        entries: dict[str, Entry] = {}
        for item in sorted(os.scandir(full), key=lambda e: e.name):
            child = f"{rel}/{item.name}" if rel else item.name
            if not self._tracked(child):
                continue
            if item.is_dir(follow_symlinks=False):
                self._scan_existing(child)
                entries[item.name] = DirEntry(child)
            elif item.is_file(follow_symlinks=False):
                entries[item.name] = FileEntry(self._new_ino(Path(item.path).read_bytes()))
        self._dirs[rel] = Directory(dict(entries), dict(entries))

    def _dir(self, rel: str) -> Directory:
        found = self._dirs.get(rel)
        if found is None:
            # A directory made outside FileOps: adopt it (and its parent entry) as durable.
            self.adopted.append(rel)
            if rel:
                parent, name = self._split(rel)
                pdir = self._dir(parent)
                cur = dict(pdir.current)
                cur[name] = DirEntry(rel)
                dur = dict(pdir.durable)
                dur[name] = DirEntry(rel)
                self._dirs[parent] = Directory(dur, cur, pdir.pending)
            found = Directory({}, {})
            self._dirs[rel] = found
        return found

    def _lookup(self, rel: str) -> int | None:
        parent, name = self._split(rel)
        entry = self._dir(parent).current.get(name)
        return entry.ino if isinstance(entry, FileEntry) else None

    def _adopt_file(self, rel: str) -> int:
        """A file that exists for real but that the model never saw: adopt it as durable."""
        self.adopted.append(rel)
        ino = self._new_ino(Path(self.root, rel).read_bytes())
        parent, name = self._split(rel)
        d = self._dir(parent)
        cur = dict(d.current)
        cur[name] = FileEntry(ino)
        dur = dict(d.durable)
        dur[name] = FileEntry(ino)
        self._dirs[parent] = Directory(dur, cur, d.pending)
        return ino

    def _point(self, kind: str, rel: str, detail: str = "") -> int:
        """Record a crash point before a mutating operation; returns the op's index."""
        if self._finished:
            raise RuntimeError("the simulation is finished")
        index = len(self.trace)
        op = TraceOp(index, kind, rel, detail)
        self.points.append(CrashPoint(index, op, self.image(), self._db_snapshot()))
        self.trace.append(op)
        return index

    def _dir_change(self, parent: str, op: DirOp) -> None:
        self._dirs[parent] = self._dir(parent).change(op)

    def image(self) -> Image:
        return Image(dict(self._inodes), dict(self._dirs))

    @property
    def ops_done(self) -> int:
        """How many mutating operations have been performed: a crash point index."""
        return len(self.trace)

    def finish(self) -> None:
        """The final crash point: after every operation."""
        if not self._finished:
            self.points.append(CrashPoint(len(self.trace), None, self.image(), self._db_snapshot()))
            self._finished = True
        if self._db_conn is not None:
            self._db_conn.close()
            self._db_conn = None

    # --- the state database's committed content -----------------------------------------------

    def _db_snapshot(self) -> int | None:
        if self.db_path is None:
            return None
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            if self._db_conn is not None:
                self._db_conn.close()
                self._db_conn = None
            self._db_ident = None
            return None
        ident = (st.st_dev, st.st_ino)
        if self._db_conn is None or ident != self._db_ident:
            if self._db_conn is not None:
                self._db_conn.close()
            self._db_conn = sqlite3.connect(
                f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False
            )
            self._db_ident = ident
            self._db_version = None
        version = int(self._db_conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._db_version or not self.db_snapshots:
            # One read transaction: exactly what the last COMMIT left, never a half batch.
            data = self._db_conn.serialize()
            if not self.db_snapshots or self.db_snapshots[-1] != data:
                self.db_snapshots.append(data)
            self._db_version = version
        return len(self.db_snapshots) - 1

    # --- FileOps --------------------------------------------------------------------------------

    def open_append(self, path: str, *, create: bool = False) -> Handle:
        rel = self._rel(path)
        tracked = self._tracked(rel)
        if create and tracked:
            self._point("create", rel)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        fd = os.open(path, flags, 0o640)
        ino: int | None = None
        if tracked:
            if create:
                ino = self._new_ino(b"")
                parent, name = self._split(rel)
                self._dir_change(parent, DirOp(len(self.trace) - 1, ((name, FileEntry(ino)),)))
            else:
                ino = self._lookup(rel)
                if ino is None:
                    ino = self._adopt_file(rel)
        self._open[fd] = _Open(rel, ino, append=True)
        return fd

    def open_write(self, path: str, *, create: bool = False) -> Handle:
        fd = self.open_append(path, create=create)
        # The same file opened without O_APPEND: writes go where pwrite says.
        os.close(fd)
        h = self._open.pop(fd)
        flags = os.O_WRONLY | os.O_CLOEXEC
        fd = os.open(path, flags)
        self._open[fd] = _Open(h.rel, h.ino, append=False)
        return fd

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        h = self._open.get(handle)
        if h is None or h.ino is None:
            return os.pwrite(handle, data, offset)
        self._point("write", h.rel, f"{len(data)} bytes at {offset}")
        n = os.pwrite(handle, data, offset)
        if n > 0:
            self._inodes[h.ino] = self._inodes[h.ino].change(
                DataOp("write", offset, bytes(data[:n]))
            )
        return n

    def reserve(self, handle: Handle, offset: int, length: int) -> None:
        h = self._open.get(handle)
        if h is None or h.ino is None:
            os.posix_fallocate(handle, offset, length)
            return
        self._point("reserve", h.rel, f"{length} bytes at {offset}")
        os.posix_fallocate(handle, offset, length)
        if offset + length > len(self._inodes[h.ino].current):
            self._inodes[h.ino] = self._inodes[h.ino].change(DataOp("truncate", offset + length))

    def fdatasync(self, handle: Handle) -> None:
        h = self._open.get(handle)
        if h is None or h.ino is None:
            os.fdatasync(handle)
            return
        self._point("fdatasync", h.rel)
        self._inodes[h.ino] = self._inodes[h.ino].synced()

    def open_new(self, path: str, mode: int = 0o640) -> Handle:
        rel = self._rel(path)
        tracked = self._tracked(rel)
        if tracked:
            self._point("open_new", rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        ino: int | None = None
        if tracked:
            ino = self._lookup(rel)
            if ino is None:
                ino = self._new_ino(b"")
                parent, name = self._split(rel)
                self._dir_change(parent, DirOp(len(self.trace) - 1, ((name, FileEntry(ino)),)))
            elif self._inodes[ino].current:
                self._inodes[ino] = self._inodes[ino].change(DataOp("truncate", 0))
        self._open[fd] = _Open(rel, ino, append=False)
        return fd

    def open_read(self, path: str) -> Handle:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        h = self._open.get(handle)
        if h is None or h.ino is None:
            return os.write(handle, data)
        size = len(self._inodes[h.ino].current)
        offset = size if h.append else h.pos
        self._point("write", h.rel, f"{len(data)} bytes at {offset}")
        n = os.write(handle, data)
        if n > 0:
            op = DataOp("write", offset, bytes(data[:n]))
            self._inodes[h.ino] = self._inodes[h.ino].change(op)
            h.pos = offset + n
        return n

    def pread(self, handle: Handle, size: int, offset: int) -> bytes:
        return os.pread(handle, size, offset)

    def fsync(self, handle: Handle) -> None:
        h = self._open.get(handle)
        if h is None or h.ino is None:
            os.fsync(handle)
            return
        self._point("fsync", h.rel)
        self._inodes[h.ino] = self._inodes[h.ino].synced()

    def fsync_dir(self, path: str) -> None:
        # Open it as the real one does (a missing directory raises), without the host's fsync.
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        rel = self._rel(path)
        if rel and not self._tracked(rel):
            return
        self._point("fsync_dir", rel or ".")
        self._dirs[rel] = self._dir(rel).synced()

    def ftruncate(self, handle: Handle, length: int) -> None:
        h = self._open.get(handle)
        if h is None or h.ino is None:
            os.ftruncate(handle, length)
            return
        self._point("ftruncate", h.rel, f"to {length}")
        os.ftruncate(handle, length)
        self._inodes[h.ino] = self._inodes[h.ino].change(DataOp("truncate", length))

    def fchmod(self, handle: Handle, mode: int) -> None:
        os.fchmod(handle, mode)  # permissions are not modelled: a crash keeps or loses bytes

    def close(self, handle: Handle) -> None:
        self._open.pop(handle, None)
        os.close(handle)

    def fstat_size(self, handle: Handle) -> int:
        return os.fstat(handle).st_size

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def listdir(self, path: str) -> list[str]:
        return [entry.name for entry in os.scandir(path)]

    def mkdir(self, path: str) -> None:
        rel = self._rel(path)
        tracked = self._tracked(rel)
        if tracked:
            self._point("mkdir", rel)
        os.mkdir(path, 0o750)
        if tracked:
            parent, name = self._split(rel)
            self._dirs[rel] = Directory({}, {})
            self._dir_change(parent, DirOp(len(self.trace) - 1, ((name, DirEntry(rel)),)))

    def rename(self, src: str, dst: str) -> None:
        srel, drel = self._rel(src), self._rel(dst)
        s_tracked, d_tracked = self._tracked(srel), self._tracked(drel)
        if s_tracked or d_tracked:
            self._point("rename", srel, f"-> {drel}")
        entry: Entry | None = None
        if s_tracked:
            sparent, sname = self._split(srel)
            entry = self._dir(sparent).current.get(sname)
            if entry is None and os.path.isfile(src):
                entry = FileEntry(self._adopt_file(srel))
        os.rename(src, dst)
        if not (s_tracked or d_tracked):
            return
        op_id = len(self.trace) - 1
        sparent, sname = self._split(srel)
        dparent, dname = self._split(drel)
        if d_tracked and entry is None:
            entry = FileEntry(self._new_ino(Path(dst).read_bytes()))
            self.adopted.append(drel)
        if s_tracked and d_tracked and sparent == dparent:
            self._dir_change(sparent, DirOp(op_id, ((sname, None), (dname, entry))))
            return
        if s_tracked:
            self._dir_change(sparent, DirOp(op_id, ((sname, None),)))
        if d_tracked:
            self._dir_change(dparent, DirOp(op_id, ((dname, entry),)))

    def unlink(self, path: str) -> None:
        rel = self._rel(path)
        tracked = self._tracked(rel)
        if tracked:
            self._point("unlink", rel)
        os.unlink(path)
        if tracked:
            parent, name = self._split(rel)
            self._dir_change(parent, DirOp(len(self.trace) - 1, ((name, None),)))


# --- crash states ---------------------------------------------------------------------------------


def _garbage(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def data_variants(inode: Inode, seed: int) -> list[tuple[str, bytes]]:
    """The contents a crash may leave in a file with unsynced changes (never the current one)."""
    durable, current, ops = inode.durable, inode.current, inode.pending
    out: list[tuple[str, bytes]] = [("drop", durable)]
    if len(ops) >= 2:
        for j in range(1, len(ops)):
            content = durable
            for op in ops[:j]:
                content = apply_data(content, op)
            out.append((f"ops[:{j}]", content))
    # Reordering whole operations matters where metadata is involved: a truncate (a change of the
    # file's size) may reach the disk before or after the writes around it, so each truncate is
    # also dropped on its own. Data of several unsynced writes reaches the disk in sectors and
    # pages, in any order: that is what the holes below model. Dropping one plain write's exact
    # byte range would leave a hole no page cache can produce (its edges are not sector
    # boundaries: every sector written back holds a version of the page cache, and no version
    # had a later write's bytes without an earlier one's), so it is not a state a power cut can
    # leave. (Generating it anyway made boots "degraded" over states no disk produces: round 99
    # of `make stress`, a dropped 379-byte append before an ENOSPC truncate-back.)
    if len(ops) >= 2 and any(op.kind == "truncate" for op in ops):
        for i in range(len(ops)):
            if ops[i].kind != "truncate":
                continue
            content = durable
            for k, op in enumerate(ops):
                if k != i:
                    content = apply_data(content, op)
            out.append((f"ops-without-{i}", content))
            # ...and that size's data reaching the disk in part, as below for the current one.
            out.extend(_sector_variants(f"ops-without-{i}:", durable, content, seed))
    # Writes into space the file had (reserved by a growing truncate or fallocate): its size
    # does not depend on them, each sector holds the new bytes or what was there. When that
    # size is already durable, the file cannot come back shorter or longer.
    sized = durable
    for op in ops:
        if op.kind == "truncate":
            sized = apply_data(sized, op)
    in_place = len(sized) == len(current) and sized != current
    if not (in_place and len(durable) == len(current)):
        out.extend(_sector_variants("", durable, current, seed))
    if in_place:
        out.extend(_in_place_variants(sized, current))
    return out


def _in_place_variants(before: bytes, content: bytes) -> list[tuple[str, bytes]]:
    """`content` (as long as `before`) with its changed sectors written up to each sector
    boundary, with one sector not written, or with none written."""
    lo = _common_prefix(before, content)
    hi = len(content) - _common_prefix(before[::-1], content[::-1])
    bounds = list(range((lo // SECTOR + 1) * SECTOR, hi, SECTOR))
    out = [(f"in-place-torn@{b}", content[:b] + before[b:]) for b in bounds]
    pieces = [lo, *bounds, hi]
    if len(pieces) > 2:
        for a, b in itertools.pairwise(pieces):
            out.append((f"in-place-hole@{a}-{b}", content[:a] + before[a:b] + content[b:]))
    out.append(("in-place-none", before))
    return out


def _sector_variants(
    prefix: str, durable: bytes, content: bytes, seed: int
) -> list[tuple[str, bytes]]:
    """`content`'s unsynced region torn at each sector, one sector missing, zeros, garbage."""
    out: list[tuple[str, bytes]] = []
    lo, hi = _common_prefix(durable, content), len(content)
    if hi > lo:
        bounds = list(range((lo // SECTOR + 1) * SECTOR, hi, SECTOR))
        for b in bounds:
            out.append((f"{prefix}torn@{b}", content[:b]))
        pieces = [lo, *bounds, hi]
        if len(pieces) > 2:
            for a, b in itertools.pairwise(pieces):
                out.append((f"{prefix}hole@{a}-{b}", content[:a] + bytes(b - a) + content[b:]))
        out.append((f"{prefix}zeros", content[:lo] + bytes(hi - lo)))
        out.append((f"{prefix}garbage", content[:lo] + _garbage(hi - lo, seed)))
    return out


def _build(
    image: Image,
    keep_dir_op: Callable[[DirOp], bool],
    contents: Mapping[int, bytes],
    name: str,
) -> CrashState:
    files: dict[str, bytes] = {}
    dirs: set[str] = set()

    def walk(rel: str) -> None:
        d = image.dirs[rel]
        dirs.add(rel)
        entries = dict(d.durable)
        for op in d.pending:
            if keep_dir_op(op):
                apply_dir(entries, op)
        for ename, entry in entries.items():
            child = f"{rel}/{ename}" if rel else ename
            if isinstance(entry, DirEntry):
                if entry.path in image.dirs and child == entry.path:
                    walk(entry.path)
            else:
                ino = entry.ino
                files[child] = contents.get(ino, image.inodes[ino].current)

    walk("")
    return CrashState(name, files, frozenset(dirs))


def _no_dir_op(op: DirOp) -> bool:
    return False


def _not_op(op_id: int, op: DirOp) -> bool:
    return op.op_id != op_id


def _before_op(op_id: int, op: DirOp) -> bool:
    return op.op_id < op_id


def crash_states(point: CrashPoint) -> list[CrashState]:
    """A bounded, deterministic, de-duplicated list of the states a crash here may leave."""
    image = point.image
    dir_ops = sorted(
        {op.op_id for d in image.dirs.values() for op in d.pending},
    )
    dirty = sorted(ino for ino, node in image.inodes.items() if node.pending)
    states: list[CrashState] = []

    def keep_all(op: DirOp) -> bool:
        return True

    def keep_none(op: DirOp) -> bool:
        return False

    states.append(_build(image, keep_all, {}, "keep-all"))
    drop_data = {ino: image.inodes[ino].durable for ino in dirty}
    states.append(_build(image, keep_none, drop_data, "drop-all"))
    if dir_ops:
        states.append(_build(image, keep_none, {}, "dir-ops-lost"))
        states.append(_build(image, keep_all, drop_data, "data-lost"))
        for op_id in dir_ops:
            lose_one = partial(_not_op, op_id)
            states.append(_build(image, lose_one, {}, f"dir-op-{op_id}-lost"))
            if op_id != dir_ops[0]:
                lose_later = partial(_before_op, op_id)
                states.append(_build(image, lose_later, {}, f"dir-ops-from-{op_id}-lost"))
    for ino in dirty:
        for vname, content in data_variants(image.inodes[ino], seed=point.index * 1000 + ino):
            states.append(_build(image, keep_all, {ino: content}, f"ino{ino}:{vname}"))
    seen: set[str] = set()
    unique: list[CrashState] = []
    for state in states:
        key = state.key
        if key not in seen:
            seen.add(key)
            unique.append(state)
    return unique


def durable_state(point: CrashPoint) -> CrashState:
    """What every crash here keeps: only fsynced bytes under fsynced names."""
    image = point.image
    durable = {ino: node.durable for ino, node in image.inodes.items()}
    return _build(image, _no_dir_op, durable, "durable")


def iter_crash_states(points: list[CrashPoint]) -> Iterator[tuple[CrashPoint, CrashState]]:
    for point in points:
        for state in crash_states(point):
            yield point, state


@dataclass
class Tally:
    """Counts for the summary line."""

    points: int = 0
    states: int = 0
    trials: int = 0
    acknowledged_checked: int = 0
    lost: int = 0
    failed_boots: int = 0
    failures: list[str] = field(default_factory=list)
    verdicts: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return (
            f"crash-states: trials={self.trials} acknowledged_checked={self.acknowledged_checked} "
            f"lost={self.lost} failed_boots={self.failed_boots}"
        )
