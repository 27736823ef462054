"""A state database of schema version 1 (before `meta.fts_seq` and `block.retracted`) is
migrated in place to the schema a new database has: the verifier's schema comparison finds no
difference."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from timelined.state.schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from timelined.verifier.compare import Differences, compare_schema


def test_a_version_1_state_is_migrated_to_the_new_schema(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        MIGRATIONS[0].run(conn)  # the v1 schema, as a daemon before this change left it
        conn.execute("PRAGMA user_version = 1")
        assert migrate(conn) == [
            "record how far the search index is (meta.fts_seq)",
            "add the retractions table",
        ]
        assert schema_version(conn) == SCHEMA_VERSION == 3
        out = Differences()
        compare_schema(conn, out)
        assert out.items == []
        assert migrate(conn) == []  # nothing left to do
    finally:
        conn.close()
