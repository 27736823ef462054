"""Helpers shared by the test suites: state dumps for comparing a state with a replay."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path
from types import ModuleType

from timelined.state.apply import BLOCK_COLUMNS
from timelined.state.dbapi import DbConn
from timelined.state.replay import rebuild

TABLES = {
    "meta": "id",
    "conversations": "id",
    "contexts": "id",
    "blocks": "seq",
    "focus": "id",
    "crossrefs": "id",
    "retractions": "block_id",
}


# meta.fts_seq is the search index's bookkeeping, not an entity: like the index itself it is
# left out (the writer indexes after its commits, so it legitimately lags a replay's, which
# indexes as it goes); the verifier checks the index against it exactly (verifier/compare.py).
# Blocks by their columns, not `*`: on PostgreSQL they also hold the generated search vector.
_COLUMNS = {
    "meta": "id, last_seq, last_hash, event_schema",
    "blocks": ", ".join(BLOCK_COLUMNS),
}


def dump_state(db: Path | DbConn) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every entity table, ordered by key: two equal dumps are equal states
    (on either backend: a PgConnection gives rows as the same tuples)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True) if isinstance(db, Path) else db
    try:
        return {
            table: conn.execute(
                f"SELECT {_COLUMNS.get(table, '*')} FROM {table} ORDER BY {key}"
            ).fetchall()
            for table, key in TABLES.items()
        }
    finally:
        if isinstance(db, Path):
            conn.close()


def replay_dump(log_dir: Path, scratch: Path) -> dict[str, list[tuple[object, ...]]]:
    """The dump of a fresh replay of the log."""
    if scratch.exists():
        scratch.unlink()
    rebuild(log_dir, scratch)
    return dump_state(scratch)


def fts_ok(db: Path) -> bool:
    conn = sqlite3.connect(db)
    try:
        conn.execute("INSERT INTO blocks_fts(blocks_fts) VALUES ('integrity-check')")
        return True
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def load_script(path: Path) -> ModuleType:
    """A standalone script of tools/ (not a package module) imported by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
