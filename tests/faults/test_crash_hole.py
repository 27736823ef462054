"""A power cut that reorders the sectors of an unsynced append: a *crash hole* is a torn tail.

Found by the crash-state suite: a batch of several lines, appended with one write and not yet
fsynced, can reach the disk later sectors first. The file then holds the earlier lines' bytes as
zeros (a 512-byte-aligned run of NULs) followed by the batch's later, complete and self-
consistent lines. Those lines were never acknowledged (their fsync had not returned), so the boot
must cut from the hole on — not declare the log damaged and refuse every write. Anything that is
not such a hole stays damage (Rule 3).
"""

from __future__ import annotations

from pathlib import Path

from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.auditlog.repair import cut_torn_tail
from timelined.auditlog.scan import scan_tail, walk_chain
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.events import DAEMON, BlockAppended, BlockData

TS = "2026-11-22T03:38:00.123456Z"


def lines(count: int, size: int = 400) -> list[bytes]:
    out, prev = [], GENESIS_PREV
    for seq in range(1, count + 1):
        block = BlockData(
            id=f"blk_{seq}", context_id="ctx_1", role="user", content="y" * size, timestamp=TS
        )
        record, line = encode_record(seq, TS, DAEMON, BlockAppended(block=block), prev)
        out.append(line)
        prev = record.hash
    return out


def write(log_dir: Path, items: list[bytes], segment_bytes: int = 1 << 20) -> Path:
    writer = LogWriter(log_dir, LogHead(), segment_bytes=segment_bytes, fsync="off")
    for seq, line in enumerate(items, start=1):
        writer.write_batch(line, seq, seq, "0" * 64)
    writer.close()
    return sorted(log_dir.glob("*.jsonl"))[-1]


def punch(path: Path, start: int, end: int) -> None:
    data = bytearray(path.read_bytes())
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))


def test_a_sector_hole_followed_by_complete_lines_is_a_torn_tail(tmp_path: Path) -> None:
    items = lines(8)
    durable = b"".join(items[:5])  # fsynced before the crash
    seg = write(tmp_path / "log", items)  # the last 3 lines: one unsynced batch
    start = ((len(durable) // 512) + 1) * 512
    punch(seg, start, start + 512)  # that sector never reached the disk; later ones did
    assert seg.read_bytes()[-len(items[-1]) :] == items[-1], "a complete line follows the hole"
    unsynced = seg.read_bytes()[len(durable) :]
    scan = scan_tail(tmp_path / "log")
    assert scan.damage is None, scan.damage
    assert scan.torn is not None and scan.last_seq == 5 and scan.end_offset == len(durable)
    assert walk_chain(tmp_path / "log").ok
    kept = cut_torn_tail(tmp_path / "log", scan.torn, quarantine_dir=tmp_path / "q")
    assert seg.read_bytes() == durable
    assert Path(kept).read_bytes() == unsynced, "the cut bytes are kept whole in quarantine"


def test_a_hole_at_the_start_of_the_batch_is_a_torn_tail(tmp_path: Path) -> None:
    items = lines(6)
    durable = b"".join(items[:3])
    seg = write(tmp_path / "log", items)
    punch(seg, len(durable), ((len(durable) // 512) + 1) * 512)  # from the batch's first byte
    scan = scan_tail(tmp_path / "log")
    assert scan.damage is None and scan.torn is not None and scan.last_seq == 3


def test_nuls_that_are_not_a_sector_hole_are_damage(tmp_path: Path) -> None:
    items = lines(8)
    seg = write(tmp_path / "log", items)
    at = len(b"".join(items[:5])) + 100
    punch(seg, at, at + 7)  # a few zeroed bytes mid-line: no crash leaves that
    scan = scan_tail(tmp_path / "log")
    assert scan.damage is not None and scan.damage.seq == 6


def test_an_edited_line_followed_by_good_lines_is_still_damage(tmp_path: Path) -> None:
    items = lines(8)
    seg = write(tmp_path / "log", items)
    data = bytearray(seg.read_bytes())
    data[len(b"".join(items[:6])) + 200] ^= 0x01  # one flipped bit in seq 7
    seg.write_bytes(bytes(data))
    scan = scan_tail(tmp_path / "log")
    assert scan.damage is not None and scan.damage.seq == 7 and scan.torn is None


def test_a_hole_in_a_segment_before_the_last_is_damage(tmp_path: Path) -> None:
    items = lines(8)
    write(tmp_path / "log", items, segment_bytes=1500)
    first = sorted((tmp_path / "log").glob("*.jsonl"))[0]
    punch(first, 512, 1024)
    scan = scan_tail(tmp_path / "log")
    assert scan.damage is not None and scan.torn is None


def test_a_hole_before_the_states_anchor_is_found(tmp_path: Path) -> None:
    """log.fsync = "interval": the state committed seq 8 before the log's fsync; the power cut
    kept seq 7 and 8 but not a sector of seq 6. The anchor line (seq 8) is whole, but the log
    before it is not: the boot must not trust it, nor skip the hole."""
    items = lines(8, size=1500)
    durable = b"".join(items[:5])
    seg = write(tmp_path / "log", items)
    start = ((len(durable) + 100) // 512 + 1) * 512  # past seq 6's `{"seq":6,`: it still reads
    assert start + 512 < len(durable) + len(items[5]), "the hole is inside seq 6"
    punch(seg, start, start + 512)
    anchor_hash = encode_hashes(items)[8]
    scan = scan_tail(tmp_path / "log", 8, anchor_hash)
    assert scan.anchor == "missing", "seq 8 is past a torn tail: the state is ahead of the log"
    assert scan.damage is None and scan.torn is not None
    assert (scan.last_seq, scan.end_offset) == (5, len(durable))


def encode_hashes(items: list[bytes]) -> dict[int, str]:
    from timelined.auditlog.record import check_frame

    out = {}
    for line in items:
        seq, _, digest = check_frame(line[:-1])
        out[seq] = digest.decode()
    return out
