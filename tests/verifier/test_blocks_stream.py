"""The blocks compared as the replay makes them (verifier/blocks.py) report exactly what the
comparison in SQL reported (the blocks inserted into the scratch and joined back): the same
differences, in the same order, the same totals and the same search-index note, at any cap."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from timelined.api.verify import Difference
from timelined.auditlog.record import RecordError, _envelope, decode_unhashed
from timelined.events import Record, decode_data
from timelined.state.apply import set_fts_seq
from timelined.verifier.compare import Differences, compare_all, expected_fts_seq, read_fts_seq
from timelined.verifier.replay import open_replay_scratch, remove_db, replay_into
from timelined.verifier.state import check_state


def _reference(state_db: Path, log_dir: Path, work: Path, cap: int) -> tuple[Differences, str]:
    """The comparison as it was: every block in the scratch database, compared in SQL."""
    scratch = work / "reference.db"
    remove_db(scratch)
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, isolation_level=None)
    try:
        seq = conn.execute("SELECT last_seq FROM meta").fetchone()[0]
        indexed_upto = expected_fts_seq(read_fts_seq(conn), seq)
        writer = open_replay_scratch(scratch)
        try:
            replay_into(writer, log_dir, seq)
            set_fts_seq(writer, indexed_upto)
        finally:
            writer.close()
        conn.execute("ATTACH DATABASE ? AS scratch", (f"file:{scratch}?mode=ro",))
        conn.execute("BEGIN")
        out = Differences(cap)
        note = compare_all(conn, out, indexed_upto=indexed_upto)
        conn.execute("COMMIT")
        return out, note
    finally:
        conn.close()
        remove_db(scratch)


def _tamper(db: Path, changes: list[str]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for sql in changes:
            conn.execute(sql)
    finally:
        conn.close()


_BLOCKS = [
    # changed columns, one and several
    "UPDATE blocks SET content = 'tampered' WHERE seq = (SELECT seq FROM blocks LIMIT 1 OFFSET 3)",
    "UPDATE blocks SET position = position + 100, role = 'x' "
    "WHERE seq = (SELECT seq FROM blocks LIMIT 1 OFFSET 7)",
    "UPDATE blocks SET time_taken = 1.5, tokens_input = NULL "
    "WHERE seq = (SELECT seq FROM blocks LIMIT 1 OFFSET 9)",
    # missing blocks: the first, one in the middle, the last
    "DELETE FROM blocks WHERE seq = (SELECT min(seq) FROM blocks)",
    "DELETE FROM blocks WHERE seq = (SELECT seq FROM blocks LIMIT 1 OFFSET 20)",
    "DELETE FROM blocks WHERE seq = (SELECT max(seq) FROM blocks)",
    # extra blocks: before the first seq, between two, after the last
    "INSERT INTO blocks SELECT 0, 'blk_extra_low', context_id, 999, role, content, timestamp, "
    "time_taken, tokens_input, tokens_output, metadata, sub_blocks FROM blocks LIMIT 1",
    "INSERT INTO blocks SELECT seq + 1, 'blk_extra_mid', context_id, 998, role, content, "
    "timestamp, time_taken, tokens_input, tokens_output, metadata, sub_blocks FROM blocks "
    "WHERE seq + 1 NOT IN (SELECT seq FROM blocks) LIMIT 1 OFFSET 30",
    "INSERT INTO blocks SELECT 10000000, 'blk_extra_high', context_id, 997, role, content, "
    "timestamp, time_taken, tokens_input, tokens_output, metadata, sub_blocks FROM blocks LIMIT 1",
]
_SEARCH = [
    "DELETE FROM blocks_fts_docsize WHERE id = (SELECT seq FROM blocks LIMIT 1 OFFSET 11)",
    "DELETE FROM blocks_fts_docsize WHERE id = (SELECT max(id) FROM blocks_fts_docsize)",
    "INSERT INTO blocks_fts_docsize (id, sz) VALUES (-5, x'00')",
    "INSERT INTO blocks_fts_docsize (id, sz) VALUES (20000000, x'00')",
]
# The index lagging (the writer indexes after its commits), then a document past its position
# and one missing below it.
_LAGGING = [
    "INSERT INTO blocks_fts (blocks_fts, rowid, content) SELECT 'delete', seq, content "
    "FROM blocks WHERE seq > (SELECT seq FROM blocks LIMIT 1 OFFSET 40)",
    "UPDATE meta SET fts_seq = (SELECT seq FROM blocks LIMIT 1 OFFSET 40)",
    "INSERT INTO blocks_fts (rowid, content) SELECT seq, content FROM blocks "
    "WHERE seq > (SELECT fts_seq FROM meta) LIMIT 2 OFFSET 5",
    "INSERT INTO blocks_fts (blocks_fts, rowid, content) SELECT 'delete', seq, content "
    "FROM blocks LIMIT 1 OFFSET 17",
]
_OTHERS = [
    "UPDATE contexts SET status = 'tampered' WHERE rowid = 2",
    "UPDATE meta SET event_schema = 99",
]


@pytest.mark.parametrize(
    "changes",
    [[], _BLOCKS, _SEARCH, _LAGGING, _BLOCKS + _SEARCH + _OTHERS, ["DELETE FROM blocks"]],
    ids=["clean", "blocks", "search", "lagging", "all", "no-blocks"],
)
@pytest.mark.parametrize("cap", [1000, 3, 1])
def test_same_report_as_the_sql_comparison(
    small_dir: Path, tmp_path: Path, changes: list[str], cap: int
) -> None:
    db, log = small_dir / "state.db", small_dir / "log"
    _tamper(db, changes)
    want, note = _reference(db, log, tmp_path, cap)
    got = check_state(db, log, tmp_path / "work", cap=cap)
    assert got.differences == want.items
    assert got.differences_total == want.total
    assert got.search_index == note
    if changes:
        assert got.differences_total > 0


def test_unreadable_blocks_are_database_damage(small_dir: Path, tmp_path: Path) -> None:
    """A blocks table SQLite cannot read is reported as the database's, not as a failed replay."""
    db = small_dir / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")  # the pages below are the file's own
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'blocks'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    result = check_state(db, small_dir / "log", tmp_path / "work")
    assert [d.entity for d in result.differences][-1:] == ["database"]
    assert any(
        isinstance(d, Difference) and "cannot read" in (d.detail or "") for d in result.differences
    )


@pytest.mark.parametrize("damaged", [False, True])
def test_offline_integrity_check_runs_alongside_the_replay(
    small_dir: Path, tmp_path: Path, damaged: bool
) -> None:
    """On a copy, FTS5's token-level check (run in a thread during the replay) still reports."""
    db = small_dir / "state.db"
    if damaged:
        # Terms gone from the index while every document (docsize) stays: only the token-level
        # check can see it.
        _tamper(db, ["DELETE FROM blocks_fts_data WHERE id > 10"])
    result = check_state(db, small_dir / "log", tmp_path / "work", copy=True)
    if damaged:
        assert result.search_index == "documents checked: ok; integrity-check failed"
        assert [(d.entity, d.id, d.kind) for d in result.differences] == [
            ("search index", "blocks_fts", "changed")
        ]
    else:
        assert result.search_index == "documents checked: ok; integrity-check ok"
        assert result.differences_total == 0
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == []


def test_block_lines_decode_as_in_two_steps(small_dir: Path) -> None:
    """decode_unhashed's one-pass path for block.appended lines gives what the two steps give."""
    lines = [
        line
        for seg in sorted((small_dir / "log").iterdir())
        for line in seg.read_bytes().split(b"\n")
        if line
    ]
    assert any(b'"type":"block.appended"' in line for line in lines)
    for line in lines:
        envelope = _envelope.decode(line)
        want = Record(
            seq=envelope.seq,
            ts=envelope.ts,
            actor=envelope.actor,
            event=decode_data(envelope.type, envelope.data),
            prev=envelope.prev,
            hash=envelope.hash,
        )
        assert decode_unhashed(line) == want
    block = next(line for line in lines if b'"type":"block.appended"' in line)
    # Data that does not fit is refused, named by the two steps' message.
    for bad in (
        block.replace(b'"role":', b'"unknown":1,"role":'),
        block.replace(b'"type":"block.appended"', b'"type":"context.paused"'),
        block.replace(b'"seq":', b'"seq":"x","s":'),
    ):
        with pytest.raises(RecordError):
            decode_unhashed(bad)
