"""Streaming reads of the log: records or raw lines of a seq range, across segments.

Readers run while the writer appends. A last line without its newline is a write in progress
(or a torn tail the next boot cuts), so readers stop before it, as before the NUL bytes of
space the writer reserved past the last segment's records (writer.py); anything wrong before
the end of the log is damage and raises `LogDamaged`. Pass `upto_seq` = the engine's committed
head to read only acknowledged records: the writer appends a batch's lines before it commits
them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from timelined.auditlog.fileops import OS_FILEOPS, FileOps, Handle
from timelined.auditlog.record import (
    GENESIS_PREV,
    RecordError,
    check_frame,
    decode_content,
    peek_seq,
)
from timelined.auditlog.segments import list_segments, segment_index_for
from timelined.errors import LogDamaged
from timelined.events import Record

CHUNK_SIZE = 1 << 20


def iter_lines(
    fileops: FileOps,
    handle: Handle,
    offset: int = 0,
    chunk_size: int = CHUNK_SIZE,
    *,
    stop_at_nul: bool = False,
    skip_nul_chunks: bool = False,
) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line without its newline, complete) for each line from `offset` to the end.

    Only the last item can be incomplete (the bytes after the last newline). Memory stays
    bounded by the chunk size and the longest line. `stop_at_nul`: a line starting with NUL
    (the writer never writes one: space it reserved past the last record, which a batch may be
    filling) ends the lines, yielded as incomplete with what was read of it, so that a reader
    of a live last segment neither reads nor holds the reserved space.

    `skip_nul_chunks`: read chunks of NULs only (reserved space) are not held while a line
    waits for its newline; if the line goes on they are put back, so a complete line is
    always whole, but the incomplete last line is yielded without its trailing NUL chunks
    (the tail scan's boot then never holds up to `log.reserve_bytes` of them).
    """
    pos = offset
    start = offset
    pending: list[bytes] = []
    held_nuls = 0  # bytes of NUL-only chunks read into the current line and not held
    while True:
        data = fileops.pread(handle, chunk_size, pos)
        if not data:
            break
        pos += len(data)
        if stop_at_nul and not pending and data[:1] == b"\0":
            yield start, data, False
            return
        if skip_nul_chunks:
            if b"\n" not in data and data.count(0) == len(data):
                held_nuls += len(data)
                continue
            if held_nuls:  # the line goes on after them: it is whole, NULs and all
                pending.append(bytes(held_nuls))
                held_nuls = 0
        if b"\n" not in data:
            pending.append(data)  # joined once, when the line's newline arrives
            continue
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending = []
        parts = data.split(b"\n")
        # The parts are copies: the chunk is not held while they are yielded (a paused reader,
        # a Watch whose client does not read, would hold both).
        data = b""
        rest = parts.pop()
        for part in parts:
            if stop_at_nul and part[:1] == b"\0":
                yield start, part, False
                return
            yield start, part, True
            start += len(part) + 1
        if rest:
            if stop_at_nul and rest[:1] == b"\0":
                yield start, rest, False
                return
            if not skip_nul_chunks:
                # The next read starts at this line: re-reading its few bytes is cheaper than
                # joining them to the whole next chunk (a copy of every byte of the log).
                pos -= len(rest)
            else:
                pending.append(rest)
    if pending or held_nuls:
        yield start, b"".join(pending), False


def content_end(fileops: FileOps, handle: Handle, start: int, end: int) -> int:
    """One past the last byte in [start, end) that is not NUL (`start`: all NULs), reading
    backwards a chunk at a time: reserved space at a segment's end is never held whole."""
    while end > start:
        begin = max(start, end - CHUNK_SIZE)
        data = fileops.pread(handle, end - begin, begin)
        if data.count(0) != len(data):  # a quicker test than rstrip's for a chunk of NULs
            return begin + len(data.rstrip(b"\0"))
        end = begin
    return start


def read_last_line(fileops: FileOps, path: str) -> tuple[int, bytes] | None:
    """(offset, line without newline) of a file's last line, reading backwards from its end.

    None when the file is empty or does not end with a newline.
    """
    handle = fileops.open_read(path)
    try:
        size = fileops.fstat_size(handle)
        if size == 0 or fileops.pread(handle, 1, size - 1) != b"\n":
            return None
        end = size - 1
        pieces: list[bytes] = []
        pos = end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            data = fileops.pread(handle, step, pos)
            pieces.append(data)
            if b"\n" in data:
                break
        tail = b"".join(reversed(pieces))  # the bytes [pos, end): the final newline excluded
        cut = tail.rfind(b"\n")
        return pos + cut + 1, tail[cut + 1 :]
    finally:
        fileops.close(handle)


def iter_lines_backward(
    fileops: FileOps, handle: Handle, chunk_size: int = 65536
) -> Iterator[bytes]:
    """Each complete line (without its newline) from the file's last to its first; the bytes
    after the last newline (a line being written, or a torn tail) are not a line. Memory stays
    bounded by the chunk size and the longest line, as `iter_lines`: a line's pieces are
    joined once, when the newline before it is read."""
    pos = fileops.fstat_size(handle)
    # The bytes from `pos` to the next line boundary, not yet given out: pieces, last first.
    carry: list[bytes] = []
    trailing = True  # `carry` is still what follows the file's last newline
    while pos > 0:
        step = min(chunk_size, pos)
        pos -= step
        data = fileops.pread(handle, step, pos)
        if b"\n" not in data:
            carry.append(data)
            continue
        parts = data.split(b"\n")
        if carry:
            carry.append(parts[-1])
            parts[-1] = b"".join(reversed(carry))
        carry = [parts[0]]
        complete = parts[1:]
        if trailing:
            complete.pop()
            trailing = False
        yield from reversed(complete)
    if not trailing:
        yield b"".join(reversed(carry))  # the first line (b"" when the file starts with \n)


def read_line(
    log_dir: str | os.PathLike[str], seq: int, fileops: FileOps | None = None
) -> bytes | None:
    """The exact line of `seq` (newline included, its frame and hash checked), None when the
    log does not hold it. Its segment is read backwards from the end: near the log's head (the
    Merkle tree's check at boot) that is a chunk, where a forward read of a 64 MiB segment to
    its last line is ~100 ms of CPU; never more than the segment."""
    fops = fileops or OS_FILEOPS
    segments = list_segments(log_dir, fops)
    index = segment_index_for(segments, seq)
    if index < 0:
        return None
    seg = segments[index]
    handle = fops.open_read(seg.path)
    try:
        for content in iter_lines_backward(fops, handle):
            found = peek_seq(content)
            if found is None:
                raise LogDamaged(seq, "unparsable line", seg.name)
            if found < seq:
                return None  # a segment's lines ascend: it is not there
            if found == seq:
                return next(chained([(seq, content, seg.name)], seq - 1))[1]
        return None
    finally:
        fops.close(handle)


def _iter_range(
    log_dir: str | os.PathLike[str], after_seq: int, upto_seq: int | None, fops: FileOps
) -> Iterator[tuple[int, bytes, str]]:
    """(seq, line without newline, segment name) for seq after_seq+1 … upto_seq, in order."""
    segments = list_segments(log_dir, fops)
    if not segments or (upto_seq is not None and upto_seq <= after_seq):
        return
    expected = after_seq + 1
    index = segment_index_for(segments, expected)
    if index < 0:
        raise LogDamaged(expected, "the segment holding this seq is missing", segments[0].name)
    for k in range(index, len(segments)):
        seg = segments[k]
        last = k == len(segments) - 1
        handle = fops.open_read(seg.path)
        try:
            # The last segment's end: a write in progress, or the space the writer reserved.
            lines = iter_lines(fops, handle, stop_at_nul=last, skip_nul_chunks=last)
            for _offset, content, complete in lines:
                if not complete:
                    if last:
                        return
                    raise LogDamaged(expected, "incomplete line inside the log", seg.name)
                seq = peek_seq(content)
                if seq is None:
                    raise LogDamaged(expected, "unparsable line", seg.name)
                if seq <= after_seq and expected == after_seq + 1:
                    continue  # before the range, in the range's first segment
                if seq != expected:
                    raise LogDamaged(expected, f"expected seq {expected}, found {seq}", seg.name)
                yield seq, content, seg.name
                if seq == upto_seq:
                    return
                expected += 1
        finally:
            fops.close(handle)


def read_records(
    log_dir: str | os.PathLike[str],
    after_seq: int = 0,
    upto_seq: int | None = None,
    fileops: FileOps | None = None,
) -> Iterator[Record]:
    """Every record with after_seq < seq <= upto_seq, fully checked (hash, link, data)."""
    fops = fileops or OS_FILEOPS
    prev: str | None = GENESIS_PREV if after_seq == 0 else None
    for seq, content, segment in _iter_range(log_dir, after_seq, upto_seq, fops):
        try:
            record = decode_content(content)
        except RecordError as exc:
            raise LogDamaged(seq, f"{exc.kind}: {exc.detail}", segment) from None
        if prev is not None and record.prev != prev:
            raise LogDamaged(seq, "prev does not match the previous record's hash", segment)
        prev = record.hash
        yield record


def read_lines(
    log_dir: str | os.PathLike[str],
    after_seq: int = 0,
    upto_seq: int | None = None,
    fileops: FileOps | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(seq, exact line bytes with newline) for after_seq < seq <= upto_seq; hash and link checked.

    Joining the lines reproduces the log's bytes for the range.
    """
    fops = fileops or OS_FILEOPS
    return chained(_iter_range(log_dir, after_seq, upto_seq, fops), after_seq)


def chained(
    items: Iterable[tuple[int, bytes, str | None]], after_seq: int
) -> Iterator[tuple[int, bytes]]:
    """(seq, line with its newline) from (seq, line without it, where it lies) in seq order from
    after_seq + 1: each line's seq, frame and hash checked, and its `prev` against the line
    before (the genesis hash for seq 1). `LogDamaged` names the first bad seq and `where` (a
    segment's name; None for the log table). Shared by every `LogSource`."""
    expected = after_seq + 1
    prev: bytes | None = GENESIS_PREV.encode() if after_seq == 0 else None
    for seq, content, where in items:
        try:
            claimed, link, digest = check_frame(content)
        except RecordError as exc:
            raise LogDamaged(expected, f"{exc.kind}: {exc.detail}", where) from None
        if seq != expected or claimed != expected:
            found = seq if seq != expected else claimed
            raise LogDamaged(expected, f"expected seq {expected}, found {found}", where)
        if prev is not None and link != prev:
            raise LogDamaged(seq, "prev does not match the previous record's hash", where)
        prev = digest
        expected += 1
        yield seq, content + b"\n"
