"""Where the daemon reads its log from: one small interface, a file and a table implementation.

Everything in the daemon that reads committed log lines (Admin.ReadLog, Watch's catch-up, the
export parts, the Merkle tree's boot catch-up and rebuild, GetStatus' log figures) goes through
a `LogSource`, so that the same code serves the file log (`FileLogSource`, here: the segment
files of `STATE_DIR/log/`) and the PostgreSQL log table (`pgstore.logsource.TableLogSource`).
The boot's torn-tail scan, the writer and the verifier's chain walk stay file-specific: they are
about the files themselves, not about reading lines.

The contract (tests/pg/test_logsource.py runs one suite against both implementations):

- `lines(after_seq, upto_seq)`: `(seq, line)` for after_seq < seq <= upto_seq in seq order,
  `line` the exact bytes of the log line including its newline (joined, they are the file log's
  bytes for the range). Each line's frame and hash are checked and each `prev` against the line
  before it (the first one against the genesis hash when after_seq is 0); a bad line raises
  `LogDamaged` naming its seq. The log ending before `upto_seq` simply ends the iteration: pass
  the engine's committed head to read only acknowledged lines. Blocking: run it in a worker
  thread; successive steps may run in different threads. Memory is bounded (a file chunk, or
  a batch of rows) whatever the range. A paused reader (a slow watcher) holds no database
  connection (the table lends one per batch); the file implementation keeps the segment it is
  in open. Close the iterator (or drop it) to stop early.
- `line(seq)`: the line of one seq, as `lines(seq - 1, seq)` gives it (frame and hash checked;
  None when the log does not hold it), cheap near the log's head: the Merkle tree's check of
  its last leaf at every boot (the file log reads the segment backwards from its end).
- `segment_starts(after_seq, upto_seq)`: the seqs in after_seq < seq <= upto_seq that begin a
  segment file, ascending; None when the log has no segments (the table), in which case
  `timelinectl export-log` cuts segments as the file writer would with `segment_bytes`.
- `figures()`: `LogFigures` for GetStatus (blocking, cheap: no read of the lines); None, with
  a warning logged, when the storage cannot say (GetStatus is what an operator reads when
  something is wrong: it answers without them rather than fail).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from timelined.auditlog.fileops import OS_FILEOPS, FileOps
from timelined.auditlog.reader import read_line, read_lines
from timelined.auditlog.segments import list_segments

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogFigures:
    """What GetStatus says about the log's storage.

    `stored_bytes`: what the log occupies (the segments' sizes, with the space the writer
    reserved past the last record while it runs; for a table, its relation with indexes and
    TOAST). `segments`: the number of segment files, None for a table."""

    backend: str
    stored_bytes: int
    segments: int | None


class LogSource(Protocol):
    """Committed log lines, by seq range (the module's docstring is the contract)."""

    def lines(self, after_seq: int, upto_seq: int) -> Iterator[tuple[int, bytes]]: ...

    def line(self, seq: int) -> bytes | None: ...

    def segment_starts(self, after_seq: int, upto_seq: int) -> list[int] | None: ...

    def figures(self) -> LogFigures | None: ...


class FileLogSource:
    """The segment files of a log directory (a missing directory is an empty log)."""

    backend = "file"

    def __init__(self, log_dir: str | os.PathLike[str], fileops: FileOps | None = None) -> None:
        self.log_dir = os.fspath(log_dir)
        self._fops = fileops or OS_FILEOPS

    def lines(self, after_seq: int, upto_seq: int) -> Iterator[tuple[int, bytes]]:
        return read_lines(self.log_dir, after_seq, upto_seq, self._fops)

    def line(self, seq: int) -> bytes | None:
        return read_line(self.log_dir, seq, self._fops)

    def segment_starts(self, after_seq: int, upto_seq: int) -> list[int]:
        return [
            seg.first_seq
            for seg in list_segments(self.log_dir, self._fops)
            if after_seq < seg.first_seq <= upto_seq
        ]

    def figures(self) -> LogFigures | None:
        try:
            segments = list_segments(self.log_dir, self._fops)
            size = 0
            for seg in segments:
                try:
                    size += os.stat(seg.path).st_size  # noqa: PTH116
                except FileNotFoundError:
                    continue  # listed, then gone (an operator's hands): not counted
        except OSError as exc:
            log.warning("the log's figures cannot be read: %s", exc)
            return None
        return LogFigures(self.backend, size, len(segments))
