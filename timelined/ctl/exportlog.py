"""`timelinectl export-log DIR`: the daemon's audit log as segment files, whatever its backend.

It reads the log through Admin.ReadLog (bounded pages) up to the head GetStatus names at the
start, and writes exactly what the daemon's own `log/` directory would hold up to that seq: the
same lines, the same file names, the same cut. A file-backed daemon tells where its segments
start (ReadLog's `segments`); a table has none, so the lines are cut as the file writer cuts
them with the daemon's `[log] segment_bytes` (a new segment before a line once the current one
holds that much: the writer's rule with every line its own batch). `tools/verify_log.py DIR`
verifies the result unchanged.

Each line's frame, hash and link are checked as it arrives (a copy that does not chain is never
written), and the last hash must be the head hash GetStatus gave. Nothing looks complete before
it is: the segments are written into a hidden staging directory beside DIR (each fsynced), which
is renamed to DIR only at the end (a crash or Ctrl-C leaves DIR absent or empty; the staging
directory of a killed run is `.DIR.export-log.PID.tmp`, safe to delete).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from timelined.api.scalars import MAX_LIMIT
from timelined.auditlog.atomic import AtomicFile, make_dirs
from timelined.auditlog.fileops import OS_FILEOPS
from timelined.auditlog.record import GENESIS_PREV, RecordError, check_frame
from timelined.auditlog.segments import segment_name
from timelined.ctl.common import ADMIN, Ctl, Verbs

PROGRESS_EVERY_S = 1.0
SEGMENT_MODE = 0o640


def register(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "export-log",
        help="copy the daemon's audit log into DIR as segment files (the local log format, "
        "byte for byte, whatever the backend); `tools/verify_log.py DIR` verifies it",
        description="Reads the log through ReadLog up to the head at the start and writes it as "
        "<seq>.jsonl segments cut as the daemon's log is. DIR must not exist or be empty; it "
        "appears only once the export is whole. Progress on stderr (JSON lines with --json); "
        "exit 73 (DirectoryNotEmpty, CannotWrite), 74 (WriteFailed), 65 (BadLog: a line that "
        "does not chain).",
    )
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(run=export_log)


class _Refused(Exception):
    def __init__(self, code: int, name: str, message: str, **params: Any) -> None:
        super().__init__(message)
        self.code, self.name, self.message, self.params = code, name, message, params


class ExportSummary(msgspec.Struct, frozen=True):
    """export-log's --json answer."""

    dir: str
    events: int
    head_hash: str
    bytes: int
    segments: list[str]


@dataclass
class _Segments:
    """The segment files being written into `directory`, cut at `starts` (the daemon's) or,
    when None, at `segment_bytes` as the file writer cuts."""

    directory: Path
    segment_bytes: int
    names: list[str] = field(default_factory=list)
    total: int = 0
    _file: AtomicFile | None = None
    _size: int = 0

    def add(self, seq: int, line: bytes, starts: set[int] | None) -> None:
        cut = seq in starts if starts is not None else self._size >= self.segment_bytes
        if self._file is None or cut:
            self.close()
            name = segment_name(seq)
            self._file = AtomicFile(self.directory / name, fileops=OS_FILEOPS, mode=SEGMENT_MODE)
            self.names.append(name)
            self._size = 0
        self._file.write(line)
        self._size += len(line)
        self.total += len(line)

    def close(self) -> None:
        if self._file is not None:
            found, self._file = self._file, None
            found.commit()

    def abort(self) -> None:
        if self._file is not None:
            self._file.abort()
            self._file = None


def _check_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise _Refused(
            os.EX_CANTCREAT,
            "NotADirectory",
            f"{target} exists and is not a directory",
            dir=str(target),
        )
    if target.is_dir() and any(target.iterdir()):
        raise _Refused(
            os.EX_CANTCREAT,
            "DirectoryNotEmpty",
            f"{target} is not empty: export-log writes only into a new or empty directory",
            dir=str(target),
        )


class _Progress:
    def __init__(self, ctl: Ctl, head: int) -> None:
        self.ctl, self.head = ctl, head
        self.shown = time.monotonic()

    def __call__(self, done: int, segments: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < PROGRESS_EVERY_S:
            return
        self.shown = now
        err = self.ctl.out.stderr
        if self.ctl.out.json:
            progress = {"events": done, "of": self.head, "segments": segments}
            err.write(msgspec.json.encode({"progress": progress}).decode() + "\n")
        else:
            pct = 100 * done // self.head if self.head else 100
            err.write(f"export-log: {done}/{self.head} events ({pct}%), {segments} segments\n")
        err.flush()


def _copy(ctl: Ctl, staging: Path, head: int, head_hash: str, segment_bytes: int) -> _Segments:
    out = _Segments(staging, segment_bytes)
    progress = _Progress(ctl, head)
    after, prev = 0, GENESIS_PREV.encode()
    try:
        while after < head:
            reply = ctl.call(ADMIN + "ReadLog", after_seq=after, limit=MAX_LIMIT)
            if not reply.events:
                raise _Refused(
                    os.EX_DATAERR, "BadLog", f"the log ends at seq {after}, before its head {head}"
                )
            starts = set(reply.segments) if reply.segments is not None else None
            for raw in reply.events:
                content = bytes(raw)
                try:
                    seq, link, digest = check_frame(content)
                except RecordError as exc:
                    raise _Refused(
                        os.EX_DATAERR, "BadLog", f"seq {after + 1}: {exc}", seq=after + 1
                    ) from None
                if seq != after + 1 or link != prev:
                    raise _Refused(
                        os.EX_DATAERR,
                        "BadLog",
                        f"seq {after + 1}: the line read does not follow the one before",
                        seq=after + 1,
                    )
                out.add(seq, content + b"\n", starts)
                after, prev = seq, digest
                if after == head:
                    break  # later lines were written after the export began
            progress(after, len(out.names))
        if prev.decode() != head_hash:
            raise _Refused(
                os.EX_DATAERR,
                "BadLog",
                f"the line at seq {head} does not hash to the head hash the daemon reported",
                seq=head,
            )
        out.close()
    except BaseException:
        out.abort()
        raise
    progress(after, len(out.names), final=True)
    return out


def export_log(ctl: Ctl) -> int:
    target = Path(ctl.args.dir).absolute()
    try:
        _check_target(target)
        status = ctl.call(ADMIN + "GetStatus").status
        if status.log is None:
            raise _Refused(
                os.EX_SOFTWARE,
                "Unsupported",
                "the daemon does not say how its log is cut (GetStatus has no `log`): "
                "it is older than export-log",
            )
        summary = _export(ctl, target, status.last_seq, status.head_hash, status.log.segment_bytes)
    except _Refused as exc:
        return ctl.out.fail(exc.code, exc.name, exc.message, **exc.params)
    if ctl.out.json:
        ctl.out.print_json(summary)
    else:
        ctl.out.line(
            f"exported {summary.events} events ({summary.bytes} bytes, "
            f"{len(summary.segments)} segments) to {summary.dir}; head {summary.head_hash}"
        )
    return 0


def _export(ctl: Ctl, target: Path, head: int, head_hash: str, segment_bytes: int) -> ExportSummary:
    staging = target.with_name(f".{target.name}.export-log.{os.getpid()}.tmp")
    try:
        make_dirs(target.parent)
        staging.mkdir(mode=0o750)
    except OSError as exc:
        raise _Refused(
            os.EX_CANTCREAT,
            "CannotWrite",
            f"cannot create {staging}: {exc.strerror}",
            dir=str(target),
        ) from None
    try:
        try:
            written = _copy(ctl, staging, head, head_hash, segment_bytes)
            OS_FILEOPS.fsync_dir(str(staging))
            # rename(2) replaces an empty directory and refuses one that filled meanwhile.
            staging.rename(target)
            OS_FILEOPS.fsync_dir(str(target.parent))
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and target.is_dir():
                raise _Refused(
                    os.EX_CANTCREAT,
                    "DirectoryNotEmpty",
                    f"{target} was filled during the export",
                    dir=str(target),
                ) from None
            raise _Refused(
                os.EX_IOERR, "WriteFailed", f"writing {target}: {exc.strerror}", dir=str(target)
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the export succeeded
    return ExportSummary(str(target), head, head_hash, written.total, written.names)
