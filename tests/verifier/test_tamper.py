"""The tamper matrix on a stopped daemon's log: every edit is found, naming the first bad seq.

Each case changes a copy of a log the Engine wrote (many segments), then checks the chain
walk, a full offline verification (state "damaged", the same seq), and the exit code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.verifier.conftest import verify_offline
from timelined.auditlog.segments import list_segments
from timelined.verifier.chain import check_chain
from timelined.verifier.offline import run_offline


@dataclass
class Line:
    seq: int
    segment: Path
    raw: bytes  # with its newline


def log_lines(log_dir: Path) -> list[Line]:
    out = []
    for seg in list_segments(log_dir):
        path = Path(seg.path)
        for raw in path.read_bytes().splitlines(keepends=True):
            out.append(Line(json.loads(raw)["seq"], path, raw))
    return out


def middle_segment(log_dir: Path) -> tuple[Path, list[Line]]:
    """A segment in the middle of the log, and its lines."""
    segments = list_segments(log_dir)
    assert len(segments) >= 5, "the fixture must span several segments"
    path = Path(segments[len(segments) // 2].path)
    return path, [line for line in log_lines(log_dir) if line.segment == path]


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def rehash(raw: bytes) -> bytes:
    """A line with its hash recomputed by the log-format rule (a forger's line)."""
    body = raw.rstrip(b"\n")
    covered = body[: body.rindex(b',"hash":"')]
    digest = hashlib.sha256(covered + b"}").hexdigest().encode()
    return covered + b',"hash":"' + digest + b'"}\n'


def pick(lines: list[Line]) -> int:
    """An index well inside a segment's lines."""
    assert len(lines) >= 4
    return len(lines) // 2


# Each tamper changes the log and returns (expected first bad seq, expected kind).
Tamper = Callable[[Path], tuple[int, str]]


def changed_value(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raws = [line.raw for line in lines]
    raws[k] = raws[k].replace(b'"data":{', b'"data":{"x":1,', 1)
    rewrite(path, raws)
    return lines[k].seq, "hash mismatch"


def changed_value_same_length(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raw = lines[k].raw
    at = raw.index(b'"data":') + 20
    flipped = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
    rewrite(path, [line.raw if i != k else flipped for i, line in enumerate(lines)])
    return lines[k].seq, "hash mismatch"


def deleted_line(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    rewrite(path, [line.raw for i, line in enumerate(lines) if i != k])
    return lines[k].seq, "gap"


def swapped_lines(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raws = [line.raw for line in lines]
    raws[k], raws[k + 1] = raws[k + 1], raws[k]
    rewrite(path, raws)
    return lines[k].seq, "gap"


def duplicated_line(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raws = [line.raw for line in lines]
    raws.insert(k + 1, raws[k])
    rewrite(path, raws)
    return lines[k].seq, "duplicate"


def inserted_forged_line(log_dir: Path) -> tuple[int, str]:
    """A line claiming seq K, linked to K-1 and correctly hashed, inserted before the real K."""
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    real = json.loads(lines[k].raw)
    forged_body = (
        b'{"seq":%d,"ts":"%s","type":"context.focused","actor":"daemon",'
        b'"data":{"context_id":"ctx_forged"},"prev":"%s","hash":"%s"}\n'
        % (real["seq"], real["ts"].encode(), real["prev"].encode(), b"0" * 64)
    )
    raws = [line.raw for line in lines]
    raws.insert(k, rehash(forged_body))
    rewrite(path, raws)
    return lines[k].seq, "duplicate"


def changed_prev(log_dir: Path) -> tuple[int, str]:
    """prev changed and the line re-hashed, so only the link betrays it."""
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raw = lines[k].raw
    at = raw.index(b',"prev":"') + len(b',"prev":"')
    bad = raw[:at] + (b"f" if raw[at : at + 1] != b"f" else b"e") + raw[at + 1 :]
    rewrite(path, [line.raw if i != k else rehash(bad) for i, line in enumerate(lines)])
    return lines[k].seq, "broken link"


def changed_prev_naive(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raw = lines[k].raw
    at = raw.index(b',"prev":"') + len(b',"prev":"')
    bad = raw[:at] + (b"f" if raw[at : at + 1] != b"f" else b"e") + raw[at + 1 :]
    rewrite(path, [line.raw if i != k else bad for i, line in enumerate(lines)])
    return lines[k].seq, "hash mismatch"


def truncated_middle_segment(log_dir: Path) -> tuple[int, str]:
    """Cut in the middle of a line: the segment ends with half a record."""
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    keep = sum(len(line.raw) for line in lines[:k]) + len(lines[k].raw) // 2
    path.write_bytes(path.read_bytes()[:keep])
    return lines[k].seq, "incomplete line"


def truncated_middle_segment_whole_lines(log_dir: Path) -> tuple[int, str]:
    """Cut at a line boundary: the next segment starts past the expected seq."""
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    rewrite(path, [line.raw for line in lines[:k]])
    return lines[k].seq, "missing segment"


def deleted_segment(log_dir: Path) -> tuple[int, str]:
    path, lines = middle_segment(log_dir)
    path.unlink()
    return lines[0].seq, "missing segment"


def forged_line_bad_data(log_dir: Path) -> tuple[int, str]:
    """A correctly hashed and linked line whose data does not fit its type (found by replay)."""
    path, lines = middle_segment(log_dir)
    k = pick(lines)
    raw = lines[k].raw
    head, rest = raw.split(b'"data":', 1)
    forged = head + b'"data":{"unexpected":true},' + rest[rest.index(b'"prev":') :]
    raws = [line.raw for line in lines]
    raws[k] = rehash(forged)
    # every later line links to the forged one: re-chain the rest of the segment and log
    prev = json.loads(raws[k])["hash"]
    for i in range(k + 1, len(raws)):
        line = json.loads(raws[i])
        body = raws[i].replace(line["prev"].encode(), prev.encode(), 1)
        raws[i] = rehash(body)
        prev = json.loads(raws[i])["hash"]
    rewrite(path, raws)
    for seg in list_segments(log_dir):
        later = Path(seg.path)
        if seg.first_seq <= lines[-1].seq:
            continue
        out = []
        for raw2 in later.read_bytes().splitlines(keepends=True):
            line = json.loads(raw2)
            raw2 = rehash(raw2.replace(line["prev"].encode(), prev.encode(), 1))
            prev = json.loads(raw2)["hash"]
            out.append(raw2)
        rewrite(later, out)
    return lines[k].seq, "bad data"


CHAIN_CASES: list[Tamper] = [
    changed_value,
    changed_value_same_length,
    deleted_line,
    swapped_lines,
    duplicated_line,
    inserted_forged_line,
    changed_prev,
    changed_prev_naive,
    truncated_middle_segment,
    truncated_middle_segment_whole_lines,
    deleted_segment,
]


def test_untouched_log_verifies(small_dir: Path) -> None:
    result = check_chain(small_dir / "log")
    assert result.ok, result.damage
    assert result.head_seq == result.records > 600


@pytest.mark.parametrize("tamper", CHAIN_CASES, ids=lambda t: t.__name__)
def test_tamper_is_found_at_the_right_seq(
    tamper: Tamper, small_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq, kind = tamper(small_dir / "log")
    result = check_chain(small_dir / "log")
    assert not result.ok
    assert result.damage is not None
    assert (result.damage.seq, result.damage.kind) == (seq, kind), result.damage

    # The full verification (in-process here; the child-process path has its own tests).
    report = verify_offline(small_dir)
    assert report.state == "damaged"
    assert report.chain is not None and report.chain.damage is not None
    assert report.chain.damage.seq == seq
    assert f"seq {seq}" in report.summary


def test_offline_exit_code_names_the_seq(
    small_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq, _kind = swapped_lines(small_dir / "log")
    assert run_offline(small_dir, as_json=False, progress=False) == 1
    out = capsys.readouterr().out
    assert f"FIRST BAD SEQ {seq}" in out
    assert "DAMAGED" in out
    # What the walk read before it stopped, never "the whole log".
    assert f"log: read until the first bad seq ({seq}): {seq - 1} good records" in out
    assert "the whole log" not in out


def test_data_that_does_not_fit_its_type_is_found_by_the_replay(small_dir: Path) -> None:
    seq, kind = forged_line_bad_data(small_dir / "log")
    assert check_chain(small_dir / "log").ok  # hashes and links were forged consistently
    report = verify_offline(small_dir)
    assert report.state == "damaged"
    assert report.chain is not None and report.chain.damage is not None
    assert (report.chain.damage.seq, report.chain.damage.kind) == (seq, kind)


def test_deleted_last_segment_is_damage_against_the_state(small_dir: Path) -> None:
    """Deleting the last segment leaves a valid, shorter chain: the state's seq betrays it."""
    last = list_segments(small_dir / "log")[-1]
    Path(last.path).unlink()
    report = verify_offline(small_dir)
    assert report.state == "damaged"
    assert report.chain is not None and report.chain.damage is not None
    assert report.chain.damage.kind == "truncated"
    assert report.chain.damage.seq == last.first_seq


def test_a_torn_tail_below_the_state_is_truncation_not_bad_data(small_dir: Path) -> None:
    """The newline between the last two lines changed: by docs/log-format.md a torn tail from
    the last-but-one seq. The state is past it, so this is "truncated" at that seq, as when the
    tail is cut mid-line; not "bad data" from the replay reading the torn bytes."""
    last = Path(list_segments(small_dir / "log")[-1].path)
    lines = last.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 2
    seq = json.loads(lines[-2])["seq"]
    rewrite(last, [*lines[:-2], lines[-2][:-1] + b"x", lines[-1]])
    report = verify_offline(small_dir)
    assert report.chain is not None and report.chain.torn is not None
    assert report.chain.torn.seq == seq
    assert report.chain.damage is not None
    assert (report.chain.damage.seq, report.chain.damage.kind) == (seq, "truncated")


@pytest.mark.parametrize(
    "edit",
    [
        (b',"data":', b',"x":1,"data":'),  # a member timelined does not know
        (b'"type":"', b'"type":"no.such.'),  # an event type it does not know
    ],
)
def test_offline_checks_lines_past_the_state_as_the_boot_will(
    small_dir: Path, edit: tuple[bytes, bytes]
) -> None:
    """A hash-correct, linked line past the state's seq that the boot refuses as damage:
    `timelined verify` must not report "ok, the next boot rolls it forward"."""
    last = Path(list_segments(small_dir / "log")[-1].path)
    line = last.read_bytes().splitlines(keepends=True)[-1]
    seq = json.loads(line)["seq"]
    body = line[: line.rindex(b',"prev":"')].replace(b'{"seq":%d,' % seq, b'{"seq":%d,' % (seq + 1))
    forged = rehash(body.replace(*edit, 1) + b',"prev":"' + line[-67:-3] + b'","hash":"x"}\n')
    with last.open("ab") as f:
        f.write(forged)
    report = verify_offline(small_dir)
    assert report.state == "damaged", report.summary
    assert report.chain is not None and report.chain.damage is not None
    assert report.chain.damage.seq == seq + 1
    assert report.chain.head_seq == seq
