"""Readers of a live log, for real: a LogWriter appends batches in one thread (small segments,
so it rotates often; reserved space or O_APPEND) while other threads read the same files with
every forward reader (read_lines, read_records, the verifier's log_records, walk_chain), their
read chunk made small so that lines straddle reads. No mock: real files, real
pread/pwrite/posix_fallocate/ftruncate racing each other.

Every reader must give the written lines byte for byte, in order, none skipped or repeated,
never one the writer had not been handed yet, and never report damage.

A walk of a live log is always bounded by a committed seq (the daemon's verifier walks to the
writer's head at its snapshot): past it, NULs of reserved space read before a write and the
lines read after it can join into what looks like damage (verifier/runner.py).

TIMELINED_LIVE_ROUNDS (default 1) repeats each case with new seeds; TIMELINED_LIVE_RECORDS
(default 600) is how many records the writer appends in each.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import timelined.verifier.replay as vreplay
from timelined.auditlog import reader
from timelined.auditlog.reader import read_lines, read_records
from timelined.auditlog.scan import walk_chain
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.verifier.replay import log_records

from .conftest import make_lines

ROUNDS = int(os.environ.get("TIMELINED_LIVE_ROUNDS", "1"))
RECORDS = int(os.environ.get("TIMELINED_LIVE_RECORDS", "400"))


class Shared:
    """What the writer thread publishes: `handed` = the last seq given to write_batch (set
    before the call: nothing past it may be read); `committed` = the last seq whose
    write_batch returned (what an engine would commit: readers may pass it as upto_seq)."""

    def __init__(self) -> None:
        self.handed = 0
        self.committed = 0
        self.done = threading.Event()
        self.errors: list[str] = []
        self.reads: dict[str, int] = {}
        self.lock = threading.Lock()

    def fail(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)
        self.done.set()

    def count(self, name: str) -> None:
        with self.lock:
            self.reads[name] = self.reads.get(name, 0) + 1


def _writer(
    log_dir: Path,
    items: list,  # type: ignore[type-arg]
    shared: Shared,
    rng: random.Random,
    reserve: int,
) -> None:
    try:
        writer = LogWriter(
            log_dir,
            LogHead(),
            segment_bytes=rng.choice([3000, 6000, 12000]),
            fsync="interval" if reserve else "off",
            fsync_interval_ms=5,
            reserve_bytes=reserve,
        )
        i = 0
        while i < len(items) and not shared.done.is_set():
            n = rng.choice([1, 1, 2, 3, 5, 8, 13])
            chunk = items[i : i + n]
            shared.handed = chunk[-1][0].seq
            writer.write_batch(
                b"".join(line for _, line in chunk),
                chunk[0][0].seq,
                chunk[-1][0].seq,
                chunk[-1][0].hash,
            )
            shared.committed = chunk[-1][0].seq
            i += n
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.004)
        writer.close()
    except BaseException as exc:
        shared.fail(f"writer: {exc!r}")
    finally:
        shared.done.set()


def _check_run(
    name: str,
    got: list[tuple[int, bytes]],
    after: int,
    upto: int | None,
    low: int,
    high: int,
    lines: list[bytes],
    shared: Shared,
) -> bool:
    """got: (seq, line with newline) in read order. low: committed before the read began (a
    read without upto must reach at least it); high: handed after the read ended."""
    seqs = [s for s, _ in got]
    want_end = upto if upto is not None else None
    end = seqs[-1] if seqs else after
    if seqs != list(range(after + 1, end + 1)):
        shared.fail(
            f"{name}: after={after} upto={upto}: seqs not contiguous: {seqs[:5]}..{seqs[-5:]}"
        )
        return False
    if want_end is not None and end != want_end:
        shared.fail(f"{name}: after={after} upto={upto}: ended at {end}")
        return False
    if want_end is None and not (max(low, after) <= end <= high):
        shared.fail(f"{name}: after={after}: ended at {end}, outside [{low}, {high}]")
        return False
    for seq, line in got:
        if line != lines[seq - 1]:
            shared.fail(f"{name}: seq {seq}: bytes differ: {line[:60]!r}... vs expected")
            return False
    return True


def _reader(
    name: str, fn: Callable[[random.Random, Shared], None], shared: Shared, seed: int
) -> None:
    rng = random.Random(seed)
    try:
        while not shared.done.is_set():
            fn(rng, shared)
            shared.count(name)
        fn(rng, shared)  # once more on the closed log
        shared.count(name)
    except BaseException as exc:
        shared.fail(f"{name}: {exc!r}")


def _pick(rng: random.Random, shared: Shared) -> tuple[int, int | None, int]:
    low = shared.committed
    after = rng.randrange(0, low + 1) if rng.random() < 0.7 else max(0, low - rng.randrange(30))
    upto = None if rng.random() < 0.5 else rng.randrange(after, low + 1) if low > after else None
    return after, upto, low


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("chunk", [3, 7, 97, 700, 4096])
@pytest.mark.parametrize("reserve", [0, 1000, 5000])
def test_live_readers_see_exactly_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, reserve: int, round_: int
) -> None:
    """The readers' contract on a live log: read_lines / read_records / log_records with and
    without upto_seq, walk_chain with upto_seq = a committed seq."""
    _run(tmp_path, monkeypatch, chunk, reserve, round_)


def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    reserve: int,
    round_: int,
) -> None:
    seed = (chunk * 1_000_003 + reserve * 7919 + round_ * 104_729) & 0xFFFFFFFF
    log_dir = tmp_path / "log"
    items = make_lines(RECORDS)
    lines = [line for _, line in items]
    hashes = [record.hash for record, _ in items]
    # Every forward reader reads `chunk` bytes at a time (the default is bound at def time).
    defaults = reader.iter_lines.__defaults__
    assert defaults is not None and defaults[1] == reader.CHUNK_SIZE
    monkeypatch.setattr(reader.iter_lines, "__defaults__", (defaults[0], chunk))
    monkeypatch.setattr(vreplay, "_READ_CHUNK", chunk)
    shared = Shared()

    def by_lines(rng: random.Random, sh: Shared) -> None:
        after, upto, low = _pick(rng, sh)
        if low == 0:
            return
        got = list(read_lines(log_dir, after, upto))
        _check_run("read_lines", got, after, upto, low, sh.handed, lines, sh)

    def by_records(rng: random.Random, sh: Shared) -> None:
        after, upto, low = _pick(rng, sh)
        if low == 0:
            return
        recs = list(read_records(log_dir, after, upto))
        got = [(r.seq, lines[r.seq - 1]) for r in recs]
        if _check_run("read_records", got, after, upto, low, sh.handed, lines, sh):
            for r in recs:
                if r.hash != hashes[r.seq - 1]:
                    sh.fail(f"read_records: seq {r.seq}: hash differs")
                    break

    def by_verifier(rng: random.Random, sh: Shared) -> None:
        low = sh.committed
        if low == 0:
            return
        upto = None if rng.random() < 0.5 else rng.randrange(1, low + 1)
        recs = list(log_records(log_dir, upto))
        got = [(r.seq, lines[r.seq - 1]) for r in recs]
        if _check_run("log_records", got, 0, upto, low, sh.handed, lines, sh):
            for r in recs:
                if r.hash != hashes[r.seq - 1]:
                    sh.fail(f"log_records: seq {r.seq}: hash differs")
                    break

    def by_walk(rng: random.Random, sh: Shared) -> None:
        low = sh.committed
        if low == 0:
            return
        upto = rng.randrange(1, low + 1)
        good: list[bytes] = []
        report = walk_chain(log_dir, upto_seq=upto, on_lines=lambda ls: good.extend(ls))
        high = sh.handed
        if report.damage is not None:
            sh.fail(f"walk_chain upto={upto}: damage {report.damage}")
            return
        if report.torn is not None:
            sh.fail(f"walk_chain upto={upto}: torn {report.torn.reason}")
            return
        got = [(i + 1, g + b"\n") for i, g in enumerate(good)]
        ok = _check_run("walk_chain", got, 0, upto, low, high, lines, sh)
        if ok and (report.head_seq != len(good) or report.head_hash != hashes[len(good) - 1]):
            sh.fail(f"walk_chain: head {report.head_seq} vs {len(good)} lines")

    readers: list[Callable[[random.Random, Shared], None]] = [
        by_lines,
        by_lines,
        by_records,
        by_verifier,
        by_walk,
    ]
    threads = [
        threading.Thread(target=_reader, args=(fn.__name__, fn, shared, seed + k), daemon=True)
        for k, fn in enumerate(readers)
    ]
    wt = threading.Thread(
        target=_writer, args=(log_dir, items, shared, random.Random(seed), reserve), daemon=True
    )
    wt.start()
    for t in threads:
        t.start()
    wt.join(300)
    for t in threads:
        t.join(300)
    print(f"chunk={chunk} reserve={reserve}: {shared.reads}")
    assert not shared.errors, shared.errors[:5]
    # Every reader ran several times while the writer wrote.
    assert all(shared.reads.get(fn.__name__, 0) >= 2 for fn in readers), shared.reads
    # The log at rest is exactly the lines.
    got = list(read_lines(log_dir))
    assert [s for s, _ in got] == list(range(1, RECORDS + 1))
    assert b"".join(line for _, line in got) == b"".join(lines)
    report = walk_chain(log_dir)
    assert report.damage is None and report.torn is None and report.head_seq == RECORDS
