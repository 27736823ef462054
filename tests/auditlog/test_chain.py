"""The verifier's full walk and tools/verify_log.py: every tampering names the right seq."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import load_script
from timelined.auditlog.scan import scan_tail, walk_chain
from timelined.auditlog.segments import list_segments

from .conftest import segment_files, write_log

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "verify_log.py"
COUNT = 30


tool = load_script(TOOL)


def tool_verdict(log_dir: Path) -> int | None:
    """The seq the standalone tool names, None when it passes."""
    try:
        tool.verify(log_dir)
    except ValueError as exc:
        return int(str(exc).split(":")[0].removeprefix("seq "))
    return None


def rehash(line: bytes) -> bytes:
    body = line[: line.rindex(b',"hash":"')]
    return body + b',"hash":"' + hashlib.sha256(body + b"}").hexdigest().encode() + b'"}\n'


class Log:
    """A written log and line-level edits to it (seq-addressed, across segments)."""

    def __init__(self, log_dir: Path) -> None:
        self.dir = log_dir
        write_log(log_dir, COUNT, segment_bytes=3000, batch=2)
        self.segments = list_segments(log_dir)
        assert len(self.segments) >= 4

    def where(self, seq: int) -> tuple[Path, list[bytes], int]:
        seg = [s for s in self.segments if s.first_seq <= seq][-1]
        path = Path(seg.path)
        return path, path.read_bytes().splitlines(keepends=True), seq - seg.first_seq

    def edit(self, seq: int, change: Callable[[list[bytes], int], object]) -> None:
        path, lines, i = self.where(seq)
        change(lines, i)
        path.write_bytes(b"".join(lines))

    def line(self, seq: int) -> bytes:
        _, lines, i = self.where(seq)
        return lines[i]


def forged_after(log: Log, seq: int, new_seq: int, link: bool) -> bytes:
    """A line with a valid own hash: a copy of `seq`'s line renumbered, linked to it or not."""
    original = log.line(seq)
    prev_hash = original[-67:-3] if link else b"1" * 64
    body = original[: original.rindex(b',"prev":"')]
    body = body.replace(b'{"seq":%d,' % seq, b'{"seq":%d,' % new_seq, 1)
    return rehash(body + b',"prev":"' + prev_hash + b'","hash":"x"}\n')


def flip_prev(line: bytes) -> bytes:
    """The line with the first hex digit of its prev member changed (prev is line[-141:-77])."""
    digit = b"1" if line[-141:-140] == b"0" else b"0"
    return line[:-141] + digit + line[-140:]


CASES: dict[str, tuple[Callable[[Log], None], int, str]] = {
    "edit": (
        lambda log: log.edit(12, lambda ls, i: ls.__setitem__(i, ls[i].replace(b"ctx_", b"ctX_"))),
        12,
        "hash mismatch",
    ),
    "deleted line": (lambda log: log.edit(12, lambda ls, i: ls.pop(i)), 12, "gap"),
    "swapped lines": (
        lambda log: log.edit(12, lambda ls, i: ls.__setitem__(slice(i, i + 2), [ls[i + 1], ls[i]])),
        12,
        "gap",
    ),
    "duplicated line": (
        lambda log: log.edit(12, lambda ls, i: ls.insert(i, ls[i])),
        12,
        "duplicate",
    ),
    "forged line, linked": (
        lambda log: log.edit(12, lambda ls, i: ls.insert(i + 1, forged_after(log, 12, 13, True))),
        13,
        "duplicate",
    ),
    "forged line, unlinked": (
        lambda log: log.edit(12, lambda ls, i: ls.insert(i + 1, forged_after(log, 12, 13, False))),
        13,
        "broken link",
    ),
    "forged line, far seq": (
        lambda log: log.edit(12, lambda ls, i: ls.insert(i + 1, forged_after(log, 12, 99, True))),
        13,
        "gap",
    ),
    "changed prev": (
        lambda log: log.edit(12, lambda ls, i: ls.__setitem__(i, flip_prev(ls[i]))),
        12,
        "hash mismatch",
    ),
    "changed prev, rehashed": (
        lambda log: log.edit(
            12,
            lambda ls, i: ls.__setitem__(i, rehash(flip_prev(ls[i]))),
        ),
        12,
        "broken link",
    ),
}


def segment_case(log: Log, what: str) -> tuple[int, str]:
    middle = log.segments[1]
    after = log.segments[2]
    path = Path(middle.path)
    lines = path.read_bytes().splitlines(keepends=True)
    if what == "truncated middle segment":
        path.write_bytes(b"".join(lines[:-2]))
        return after.first_seq - 2, "missing segment"
    if what == "middle segment cut mid-line":
        data = b"".join(lines[:-1])
        path.write_bytes(data + lines[-1][:100])
        return after.first_seq - 1, "incomplete line"
    if what == "deleted segment":
        path.unlink()
        return middle.first_seq, "missing segment"
    if what == "renamed segment":
        path.rename(path.with_name(f"{middle.first_seq + 1:020d}.jsonl"))
        return middle.first_seq, "segment name mismatch"
    if what == "empty segment":
        (log.dir / f"{middle.first_seq - 1:020d}.jsonl").write_bytes(b"")
        return middle.first_seq - 1, "extra segment"
    if what == "first segment deleted":
        Path(log.segments[0].path).unlink()
        return 1, "missing segment"
    raise AssertionError(what)


@pytest.mark.parametrize("case", list(CASES))
def test_line_tampering_is_named(log_dir: Path, case: str) -> None:
    log = Log(log_dir)
    tamper, seq, kind = CASES[case]
    tamper(log)
    report = walk_chain(log_dir)
    assert report.damage is not None, case
    assert (report.damage.seq, report.damage.kind) == (seq, kind), report.damage
    assert report.head_seq == (seq if kind == "duplicate" else seq - 1) and not report.ok
    assert tool_verdict(log_dir) == seq


@pytest.mark.parametrize(
    "case",
    [
        "truncated middle segment",
        "middle segment cut mid-line",
        "deleted segment",
        "renamed segment",
        "empty segment",
        "first segment deleted",
    ],
)
def test_segment_tampering_is_named(log_dir: Path, case: str) -> None:
    log = Log(log_dir)
    seq, kind = segment_case(log, case)
    report = walk_chain(log_dir)
    assert report.damage is not None, case
    assert (report.damage.seq, report.damage.kind) == (seq, kind), report.damage
    assert tool_verdict(log_dir) == seq


def test_a_good_log_walks_clean_with_progress(log_dir: Path) -> None:
    items = write_log(log_dir, 70_000 // 100, segment_bytes=40_000, batch=50)
    seen: list[tuple[int, int]] = []
    report = walk_chain(log_dir, progress=lambda seq, done: seen.append((seq, done)))
    assert report.ok and report.torn is None
    assert (report.head_seq, report.head_hash) == (len(items), items[-1][0].hash)
    assert report.segments == len(segment_files(log_dir)) > 1
    assert report.bytes_scanned == sum(p.stat().st_size for p in segment_files(log_dir))
    assert walk_chain(log_dir, deep=True).ok
    assert tool_verdict(log_dir) is None
    assert seen == []  # fewer lines than the progress step
    assert walk_chain(log_dir, upto_seq=100).head_seq == 100


def test_torn_tail_is_reported_apart_and_upto_past_the_end_is_truncation(log_dir: Path) -> None:
    write_log(log_dir, 10)
    path = segment_files(log_dir)[-1]
    path.write_bytes(path.read_bytes()[:-30])
    report = walk_chain(log_dir)
    assert report.ok and report.torn is not None and report.torn.seq == 10
    assert report.head_seq == 9
    assert tool_verdict(log_dir) == 10  # the standalone tool accepts only a whole log
    report = walk_chain(log_dir, upto_seq=12)
    assert report.damage is not None and (report.damage.seq, report.damage.kind) == (
        10,
        "truncated",
    )


def test_deep_walk_checks_data(log_dir: Path) -> None:
    items = write_log(log_dir, 5)
    path = segment_files(log_dir)[-1]
    lines = [line for _, line in items]
    lines[-1] = rehash(lines[-1].replace(b'"context_id"', b'"context"'))
    path.write_bytes(b"".join(lines))
    assert walk_chain(log_dir).ok
    report = walk_chain(log_dir, deep=True)
    assert report.damage is not None and (report.damage.seq, report.damage.kind) == (
        5,
        "bad data",
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_changed_byte_names_its_record(tmp_path: Path, data: st.DataObject) -> None:
    log_dir = Path(tempfile.mkdtemp(dir=tmp_path)) / "log"
    items = write_log(log_dir, 12, segment_bytes=2500, batch=3)
    lines = [line for _, line in items]
    # A byte of any record but the last (whose damage would be a torn tail), and not the newline
    # ending the last-but-one: changed, it joins the two into one bad last line, also a torn
    # tail by the rule (test_a_changed_newline_before_the_last_line_is_a_torn_tail).
    seq = data.draw(st.integers(1, len(items) - 1))
    line = lines[seq - 1]
    pos = data.draw(st.integers(0, len(line) - (2 if seq == len(items) - 1 else 1)))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[pos]))
    segs = list_segments(log_dir)
    seg = [s for s in segs if s.first_seq <= seq][-1]
    offset = sum(len(x) for x in lines[seg.first_seq - 1 : seq - 1]) + pos
    path = Path(seg.path)
    raw = bytearray(path.read_bytes())
    raw[offset] = new
    path.write_bytes(bytes(raw))
    report = walk_chain(log_dir)
    assert report.damage is not None and report.damage.seq == seq, report.damage
    assert tool_verdict(log_dir) == seq


def test_a_changed_newline_before_the_last_line_is_a_torn_tail(log_dir: Path) -> None:
    """Records n-1 and n become one line that is not self-consistent, with nothing good after:
    by docs/log-format.md's rule that is a torn tail starting at n-1, not damage."""
    items = write_log(log_dir, 12, segment_bytes=2500, batch=3)
    last = Path(list_segments(log_dir)[-1].path)
    raw = bytearray(last.read_bytes())
    end_of_11 = len(raw) - len(items[-1][1]) - 1
    assert raw[end_of_11] == ord("\n")
    raw[end_of_11] = ord("x")
    last.write_bytes(bytes(raw))
    report = walk_chain(log_dir)
    assert report.damage is None
    assert report.torn is not None and report.torn.seq == 11
    assert report.head_seq == 10


def test_tool_names_a_directory_where_the_next_segment_would_be(log_dir: Path) -> None:
    write_log(log_dir, 5)
    (log_dir / f"{6:020d}.jsonl").mkdir()  # was an IsADirectoryError traceback
    assert tool_verdict(log_dir) == 6


def test_tool_as_a_program(log_dir: Path) -> None:
    items = write_log(log_dir, 25, segment_bytes=3000, batch=4)
    run = subprocess.run(
        [sys.executable, str(TOOL), str(log_dir)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"OK 25 events, head hash {items[-1][0].hash}"
    log = Log.__new__(Log)  # the written log, without writing another
    log.dir, log.segments = log_dir, list_segments(log_dir)
    log.edit(17, lambda ls, i: ls.__setitem__(i, ls[i].replace(b'"ts":"2026', b'"ts":"2027')))
    run = subprocess.run(
        [sys.executable, str(TOOL), str(log_dir)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert run.stderr.strip() == "FAIL seq 17: hash mismatch"
    run = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "usage" in run.stderr
    for flag in ("-h", "--help"):  # was taken for a log directory: "--help: does not exist"
        run = subprocess.run(
            [sys.executable, str(TOOL), flag], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0 and run.stdout.startswith("Verify a timelined audit log")
    for missing, why in (
        (log_dir / "nonexistent", "does not exist"),
        (next(log_dir.iterdir()), "is not a directory"),
    ):
        run = subprocess.run(
            [sys.executable, str(TOOL), str(missing)], capture_output=True, text=True, check=False
        )
        assert run.returncode == 66, run.stderr  # EX_NOINPUT, not a bare usage line
        assert run.stderr.startswith(f"{missing}: {why}"), run.stderr
    state_dir = log_dir.parent  # the state directory instead of its log/: not an empty "OK"
    assert log_dir.name == "log", log_dir
    run = subprocess.run(
        [sys.executable, str(TOOL), str(state_dir)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1 and f"{state_dir}/log, not its parent" in run.stderr, run.stdout


def test_the_docs_say_how_long_the_tool_is() -> None:
    """README and docs/log-format.md: "about N lines"; it stays short, and the docs true."""
    import re

    lines = len(TOOL.read_text(encoding="utf-8").splitlines())
    for doc in ("README.md", "docs/log-format.md"):
        said = re.findall(r"about (\d+) lines", (ROOT / doc).read_text(encoding="utf-8"))
        assert said, doc
        assert all(abs(int(n) - lines) <= 10 for n in said), (doc, said, lines)


@pytest.mark.parametrize("seq", [b"6.0", b" 6", b"true", b"06", b"-6"])
def test_a_hash_correct_line_with_a_malformed_seq_is_damage_not_torn(
    log_dir: Path, seq: bytes
) -> None:
    """A line that hashes correctly was written whole, so no crash explains a bad seq in it
    (docs/log-format.md, "Torn tail and damage"): damage even as the log's last line, never a
    torn tail for the boot to cut."""
    items = write_log(log_dir, 5)
    last = items[-1][1]
    body = last[: last.rindex(b',"prev":"')].replace(b'{"seq":5,', b'{"seq":' + seq + b",", 1)
    forged = rehash(body + b',"prev":"' + last[-67:-3] + b'","hash":"x"}\n')
    path = segment_files(log_dir)[-1]
    path.write_bytes(path.read_bytes() + forged)
    report = walk_chain(log_dir)
    assert report.torn is None and report.damage is not None, report
    assert (report.damage.seq, report.damage.kind) == (6, "unparsable"), report.damage
    scan = scan_tail(log_dir, 5, items[-1][0].hash)
    assert scan.torn is None and scan.damage is not None and scan.damage.seq == 6
    assert tool_verdict(log_dir) == 6
    # ... and after a torn line it is "a self-consistent line that follows": damage too.
    path.write_bytes(b"".join(line for _, line in items[:-1]) + last[:50] + b"\n" + forged)
    report = walk_chain(log_dir)
    assert report.torn is None and report.damage is not None, report
    assert report.damage.seq == 5, report.damage
    assert tool_verdict(log_dir) == 5


def test_a_repeated_member_is_damage_for_the_boot(log_dir: Path) -> None:
    """`…,"hash":"<junk>","prev":…,"hash":…}` hashes correctly and a decoder keeping the last
    member would read it as a good record; the boot (scan_tail, deep) must refuse it."""
    items = write_log(log_dir, 5)
    last = items[-1][1]
    body = last[: last.rindex(b',"prev":"')].replace(b'{"seq":5,', b'{"seq":6,', 1)
    body += b',"hash":"' + b"a" * 64 + b'"'
    forged = rehash(body + b',"prev":"' + last[-67:-3] + b'","hash":"x"}\n')
    path = segment_files(log_dir)[-1]
    path.write_bytes(path.read_bytes() + forged)
    scan = scan_tail(log_dir, 5, items[-1][0].hash)
    assert scan.torn is None and scan.damage is not None, scan
    assert (scan.damage.seq, scan.damage.kind) == (6, "unparsable"), scan.damage
    report = walk_chain(log_dir, deep=True)
    assert report.damage is not None and report.damage.seq == 6, report
    assert tool_verdict(log_dir) == 6


def test_tool_reads_segment_names_as_the_walk_does(log_dir: Path) -> None:
    log = Log(log_dir)
    # Not segments: Unicode digits (str.isdigit and \d accept them) and seq 0.
    (log_dir / ("\u0660" * 18 + "10.jsonl")).write_bytes(b"x")
    (log_dir / f"{0:020d}.jsonl").write_bytes(b"x")
    assert walk_chain(log_dir).ok and tool_verdict(log_dir) is None
    # A copy of a segment under an earlier name: its records are the expected ones, only the
    # name is wrong, so both name the expected seq (not the seq in the name).
    second = Path(log.segments[1].path)
    second.rename(log_dir / f"{log.segments[0].first_seq + 1:020d}.jsonl")
    report = walk_chain(log_dir)
    assert report.damage is not None and report.damage.kind == "segment name mismatch"
    assert report.damage.seq == log.segments[1].first_seq == tool_verdict(log_dir)
    # ... but when that first line is bad too, the name is all there is to go by.
    renamed = log_dir / f"{log.segments[0].first_seq + 1:020d}.jsonl"
    lines = renamed.read_bytes().splitlines(keepends=True)
    renamed.write_bytes(b"".join([lines[0].replace(b"ctx_", b"ctX_", 1), *lines[1:]]))
    report = walk_chain(log_dir)
    assert report.damage is not None and report.damage.kind == "extra segment"
    assert report.damage.seq == log.segments[0].first_seq + 1 == tool_verdict(log_dir)


@pytest.mark.parametrize(
    "edit",
    [
        (b'"ts":"', b'"ts": "'),
        (b',"actor":', b' ,"actor":'),
        (b'"actor":"daemon"', b'"actor":"daemo\\u006e"'),
        (b'{"seq":', b'{"seq":7,"seq":'),
    ],
)
def test_tool_refuses_what_the_boot_refuses(log_dir: Path, edit: tuple[bytes, bytes]) -> None:
    """A hash-correct last line that is not written as the writer writes it: the boot refuses
    it as damage, so the tool must not print OK."""
    items = write_log(log_dir, 6)
    lines = [line for _, line in items]
    assert edit[0] in lines[-1]
    lines[-1] = rehash(lines[-1].replace(*edit, 1))
    segment_files(log_dir)[-1].write_bytes(b"".join(lines[-6:]))
    for path in segment_files(log_dir)[:-1]:
        path.unlink()
    scan = scan_tail(log_dir, 5, items[-2][0].hash)
    assert scan.damage is not None and scan.damage.seq == 6, scan
    assert tool_verdict(log_dir) is not None
