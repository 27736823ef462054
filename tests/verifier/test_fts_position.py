"""The search index is written after the writer's commits (writer/engine.py): a state whose index
lags (`meta.fts_seq` < `last_seq`, exactly the blocks up to fts_seq indexed) is not drift, and
verification stays exact: a document missing below the position, a document past it, and a
position the writer cannot leave are each reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from timelined.state.replay import roll_forward
from timelined.verifier.compare import DOC_PAST_POSITION, MISSING_DOC
from timelined.verifier.state import check_state


def _lag(db: Path, keep: int) -> tuple[int, int]:
    """Unindex every block after the `keep`-th, as a crash between a batch's COMMIT and its
    index's leaves the state; returns (fts_seq, last_seq)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        fts_seq = conn.execute(
            "SELECT seq FROM blocks ORDER BY seq LIMIT 1 OFFSET ?", (keep - 1,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO blocks_fts (blocks_fts, rowid, content) "
            "SELECT 'delete', seq, content FROM blocks WHERE seq > ?",
            (fts_seq,),
        )
        conn.execute("UPDATE meta SET fts_seq = ?", (fts_seq,))
        last_seq = conn.execute("SELECT last_seq FROM meta").fetchone()[0]
        return int(fts_seq), int(last_seq)
    finally:
        conn.close()


def _run(db: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


def _found(db: Path, log: Path, work: Path) -> list[tuple[str, str, object]]:
    result = check_state(db, log, work)
    return [(d.entity, d.kind, d.key or d.detail) for d in result.differences]


def test_a_lagging_index_is_not_drift_and_the_boot_fills_it(
    small_dir: Path, tmp_path: Path
) -> None:
    db, log = small_dir / "state.db", small_dir / "log"
    fts_seq, last_seq = _lag(db, 10)
    assert fts_seq < last_seq
    result = check_state(db, log, tmp_path / "w1", copy=True)
    assert result.differences_total == 0, result.differences
    assert result.search_index == "documents checked: ok; integrity-check ok"
    # The boot's roll forward indexes the gap even with no event to apply.
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        assert roll_forward(conn, log).applied == 0
        assert conn.execute("SELECT fts_seq FROM meta").fetchone()[0] == last_seq
        hits = conn.execute(
            "SELECT count(*) FROM blocks_fts_docsize WHERE id > ?", (fts_seq,)
        ).fetchone()[0]
        assert (
            hits
            == conn.execute("SELECT count(*) FROM blocks WHERE seq > ?", (fts_seq,)).fetchone()[0]
        )
        assert hits > 0
    finally:
        conn.close()
    assert check_state(db, log, tmp_path / "w2").differences_total == 0


def test_a_document_past_the_position_is_drift(small_dir: Path, tmp_path: Path) -> None:
    db, log = small_dir / "state.db", small_dir / "log"
    fts_seq, _ = _lag(db, 10)
    # A block after the position indexed without the position moving: not what the writer does.
    _run(
        db,
        "INSERT INTO blocks_fts (rowid, content) SELECT seq, content FROM blocks "
        "WHERE seq > ? ORDER BY seq LIMIT 1",
        fts_seq,
    )
    past = [f for f in _found(db, log, tmp_path / "w") if f[0] == "search index"]
    assert len(past) == 1 and past[0][1] == "extra" and isinstance(past[0][2], int)
    assert past[0][2] > fts_seq
    detail = check_state(db, log, tmp_path / "w2").differences[0].detail
    assert detail == DOC_PAST_POSITION


def test_a_document_missing_below_the_position_is_drift(small_dir: Path, tmp_path: Path) -> None:
    db, log = small_dir / "state.db", small_dir / "log"
    fts_seq, _ = _lag(db, 10)
    _run(
        db,
        "INSERT INTO blocks_fts (blocks_fts, rowid, content) "
        "SELECT 'delete', seq, content FROM blocks WHERE seq = ?",
        fts_seq,
    )
    result = check_state(db, log, tmp_path / "w")
    assert [(d.entity, d.kind, d.key, d.detail) for d in result.differences] == [
        ("search index", "missing", fts_seq, MISSING_DOC)
    ]


@pytest.mark.parametrize("position", ["last_seq + 1", "-1"])
def test_a_position_the_writer_cannot_leave_is_drift(
    small_dir: Path, tmp_path: Path, position: str
) -> None:
    db, log = small_dir / "state.db", small_dir / "log"
    _run(db, f"UPDATE meta SET fts_seq = {position}")
    result = check_state(db, log, tmp_path / "w")
    assert [(d.entity, d.kind) for d in result.differences] == [("meta", "changed")]
    assert [f.field for f in result.differences[0].fields] == ["fts_seq"]
