"""Readers: records and raw lines of a seq range, across segments, starting at the right one."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.faults.faultops import FaultOps
from timelined.auditlog.reader import (
    iter_lines,
    iter_lines_backward,
    read_last_line,
    read_line,
    read_lines,
    read_records,
)
from timelined.auditlog.segments import list_segments
from timelined.errors import LogDamaged

from .conftest import segment_files, write_log


def test_records_of_a_range_across_segments(log_dir: Path) -> None:
    items = write_log(log_dir, 60, segment_bytes=3000, batch=4)
    assert len(segment_files(log_dir)) >= 5
    assert list(read_records(log_dir)) == [record for record, _ in items]
    for after, upto in [(0, 1), (0, 60), (7, 23), (59, None), (60, None), (12, 12), (30, 200)]:
        got = [r.seq for r in read_records(log_dir, after_seq=after, upto_seq=upto)]
        assert got == list(range(after + 1, min(upto or 60, 60) + 1))


def test_starts_at_the_segment_holding_the_range(log_dir: Path) -> None:
    write_log(log_dir, 60, segment_bytes=3000, batch=4)
    segments = list_segments(log_dir)
    target = segments[3]
    ops = FaultOps()
    first = next(read_records(log_dir, after_seq=target.first_seq, fileops=ops))
    assert first.seq == target.first_seq + 1
    assert ops.opened == [target.name]
    ops = FaultOps()  # the range starts exactly at a segment's first record
    assert next(read_lines(log_dir, after_seq=target.first_seq - 1, fileops=ops))[0] == (
        target.first_seq
    )
    assert ops.opened == [target.name]


def test_raw_lines_reproduce_the_files(log_dir: Path) -> None:
    write_log(log_dir, 40, segment_bytes=4000, batch=3)
    raw = b"".join(line for _, line in read_lines(log_dir))
    assert raw == b"".join(p.read_bytes() for p in segment_files(log_dir))
    seqs = [seq for seq, _ in read_lines(log_dir, after_seq=10, upto_seq=20)]
    assert seqs == list(range(11, 21))


def test_a_partial_last_line_is_not_read(log_dir: Path) -> None:
    items = write_log(log_dir, 10)
    with segment_files(log_dir)[-1].open("ab") as f:
        f.write(items[0][1][:50])  # a write in progress, or a torn tail
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 11))


def test_damage_raises_log_damaged_with_the_seq(log_dir: Path) -> None:
    write_log(log_dir, 10)
    path = segment_files(log_dir)[0]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"seq":5', b'"seq":6')
    path.write_bytes(b"".join(lines))
    with pytest.raises(LogDamaged) as caught:
        list(read_records(log_dir))
    assert caught.value.params["seq"] == 5
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"seq":6', b'"seq":5').replace(b'"ctx_', b'"ctY_', 1)
    path.write_bytes(b"".join(lines))
    with pytest.raises(LogDamaged) as caught:
        list(read_lines(log_dir))
    assert caught.value.params["seq"] == 5
    assert [r.seq for r in read_records(log_dir, upto_seq=4)] == [1, 2, 3, 4]


def test_last_line_found_backwards(tmp_path: Path) -> None:
    ops = FaultOps()
    path = tmp_path / "f"
    for content in [b"a\n", b"a\nbb\n", b"x" * 200_000 + b"\n" + b"y" * 70_000 + b"\n"]:
        path.write_bytes(content)
        offset, line = read_last_line(ops, str(path)) or (-1, b"")
        assert content[offset:] == line + b"\n"
    for content in [b"", b"a\nb"]:
        path.write_bytes(content)
        assert read_last_line(ops, str(path)) is None


def test_lines_backward_are_the_complete_lines_last_first(tmp_path: Path) -> None:
    ops = FaultOps()
    path = tmp_path / "f"
    long = b"x" * 200_000
    for content in [b"", b"a", b"a\n", b"a\nbb\n", b"a\nbb\ncc", long + b"\n" + long, b"\n\na\n"]:
        path.write_bytes(content)
        handle = ops.open_read(str(path))
        try:
            for chunk in (1, 3, 65536):
                got = list(iter_lines_backward(ops, handle, chunk_size=chunk))
                complete = content[: content.rfind(b"\n") + 1].split(b"\n")[:-1]
                assert got == complete[::-1], (content[:20], chunk)
        finally:
            ops.close(handle)


def test_skipped_nul_chunks_are_put_back_unless_they_end_the_file(tmp_path: Path) -> None:
    """`skip_nul_chunks`: a line is yielded whole whatever NULs it holds; only the last,
    incomplete line loses the NUL-only chunks at its end (reserved space, never held)."""
    ops = FaultOps()
    path = tmp_path / "f"
    z = b"\0" * 24
    cases = [  # content, chunk size, the lines expected (the last may be incomplete)
        (b"a\n" + z + b"b\nc\n", 4, [(0, b"a", True), (2, z + b"b", True), (28, b"c", True)]),
        (b"a\n" + z + b"b", 4, [(0, b"a", True), (2, z + b"b", False)]),
        (b"ab\n" + z, 3, [(0, b"ab", True), (3, b"", False)]),
        (b"ab\nc" + z, 4, [(0, b"ab", True), (3, b"c", False)]),
        (b"ab\nc" + z, 64, [(0, b"ab", True), (3, b"c" + z, False)]),  # NULs in a mixed chunk
        (z, 8, [(0, b"", False)]),
        (b"", 8, []),
    ]
    for content, chunk, expected in cases:
        path.write_bytes(content)
        handle = ops.open_read(str(path))
        try:
            got = list(iter_lines(ops, handle, 0, chunk, skip_nul_chunks=True))
            assert got == expected, (content, chunk)
            plain = list(iter_lines(ops, handle, 0, chunk))
            assert [line for line in plain if line[2]] == [line for line in got if line[2]]
        finally:
            ops.close(handle)


def test_one_line_by_seq_across_segments_and_past_a_torn_tail(log_dir: Path) -> None:
    items = write_log(log_dir, 40, segment_bytes=4000, batch=3)
    assert len(segment_files(log_dir)) > 2
    with segment_files(log_dir)[-1].open("ab") as f:
        f.write(items[0][1][:50])  # a write in progress, or a torn tail
    for record, line in items:
        assert read_line(log_dir, record.seq) == line
    assert read_line(log_dir, 41) is None
    assert read_line(log_dir / "none", 1) is None


def test_one_damaged_line_read_alone_is_damage_named_by_its_seq(log_dir: Path) -> None:
    write_log(log_dir, 10)
    path = segment_files(log_dir)[0]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"ctx_', b'"ctY_', 1)
    path.write_bytes(b"".join(lines))
    assert read_line(log_dir, 6) == lines[5]
    with pytest.raises(LogDamaged) as caught:
        read_line(log_dir, 5)
    assert caught.value.params["seq"] == 5


def _expected_lines(content: bytes, offset: int) -> list[tuple[int, bytes, bool]]:
    """What iter_lines must yield without its flags: every complete line, then the rest."""
    out = []
    start = offset
    *complete, rest = content[offset:].split(b"\n")
    for line in complete:
        out.append((start, line, True))
        start += len(line) + 1
    return out + ([(start, rest, False)] if rest else [])


@pytest.mark.parametrize("seed", range(40))
def test_lines_are_the_same_whatever_the_chunk_size(tmp_path: Path, seed: int) -> None:
    """Lines longer and shorter than a read, a line cut at a read's end, a file without a
    last newline, NUL bytes inside and after the lines, any starting offset."""
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randrange(0, 30)):
        length = rng.choice([0, 1, 2, 5, 17, 64, 300])
        pieces.append(bytes(rng.choice(b"ab\0") for _ in range(length)))
    content = b"\n".join(pieces) + rng.choice([b"", b"\n", b"tail", b"\0" * 40])
    path = tmp_path / "f"
    path.write_bytes(content)
    ops = FaultOps()
    handle = ops.open_read(str(path))
    try:
        offset = rng.randrange(0, len(content) + 1)
        while offset and content[offset - 1 : offset] != b"\n":
            offset -= 1  # a reader starts at a line's start
        expected = _expected_lines(content, offset)
        for chunk in (1, 2, 3, 7, 16, 64, 1 << 20):
            got = list(iter_lines(ops, handle, offset, chunk))
            assert got == expected, (seed, chunk)
            at_nul = list(iter_lines(ops, handle, offset, chunk, stop_at_nul=True))
            cut = next((i for i, line in enumerate(expected) if line[1][:1] == b"\0"), None)
            assert at_nul[: len(at_nul) - (cut is not None)] == expected[:cut], (seed, chunk)
            if cut is not None:
                start, data, complete = at_nul[-1]
                assert (start, complete) == (expected[cut][0], False)
                assert data[:1] == b"\0" and content[start:].startswith(data), (seed, chunk)
    finally:
        ops.close(handle)
