"""The state database's schema, its version (`PRAGMA user_version`) and the migration registry.

A migration is a named function applied in one transaction together with the version bump.
Because the state is derived from the log, "rebuild from the log" is always a valid migration:
recovery falls back to it for a version this code does not know how to migrate.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from timelined.errors import LocalError
from timelined.events import SCHEMA_VERSION as EVENT_SCHEMA_VERSION

SCHEMA_VERSION = 3

# Blocks use the seq of the event that created them as their rowid: every event creates at most
# one block, so seq is unique, monotonic (B-tree appends stay at the right edge), and gives FTS5
# a stable integer key.
_V1 = """
CREATE TABLE meta (
  id            INTEGER PRIMARY KEY CHECK (id = 1),
  last_seq      INTEGER NOT NULL,
  last_hash     TEXT NOT NULL,
  event_schema  INTEGER NOT NULL
);
CREATE TABLE conversations (
  id              TEXT PRIMARY KEY,
  name            TEXT NOT NULL,
  root_context_id TEXT NOT NULL,
  status          TEXT NOT NULL,
  metadata        TEXT NOT NULL,
  archive_reason  TEXT,
  imported_from   TEXT,
  created_at      TEXT NOT NULL,
  created_seq     INTEGER NOT NULL UNIQUE,
  updated_at      TEXT NOT NULL,
  updated_seq     INTEGER NOT NULL
);
CREATE TABLE contexts (
  id              TEXT PRIMARY KEY,
  conversation_id TEXT NOT NULL,
  parent_id       TEXT,
  status          TEXT NOT NULL,
  reason          TEXT NOT NULL,
  inherit_from    TEXT,
  inherit_last    INTEGER NOT NULL,
  inherit_upto    INTEGER NOT NULL,
  archive_reason  TEXT,
  tags            TEXT NOT NULL,
  created_at      TEXT NOT NULL,
  created_seq     INTEGER NOT NULL,
  updated_at      TEXT NOT NULL,
  updated_seq     INTEGER NOT NULL
);
CREATE INDEX contexts_by_conversation ON contexts (conversation_id, created_seq);
CREATE INDEX contexts_by_parent ON contexts (parent_id);
CREATE TABLE blocks (
  seq            INTEGER PRIMARY KEY,
  id             TEXT NOT NULL UNIQUE,
  context_id     TEXT NOT NULL,
  position       INTEGER NOT NULL,
  role           TEXT NOT NULL,
  content        TEXT NOT NULL,
  timestamp      TEXT NOT NULL,
  time_taken     REAL,
  tokens_input   INTEGER,
  tokens_output  INTEGER,
  metadata       TEXT NOT NULL,
  sub_blocks     TEXT NOT NULL
);
CREATE UNIQUE INDEX blocks_by_context ON blocks (context_id, position);
CREATE VIRTUAL TABLE blocks_fts USING fts5 (
  content, content = 'blocks', content_rowid = 'seq', tokenize = 'unicode61'
);
CREATE TABLE focus (
  id              INTEGER PRIMARY KEY CHECK (id = 1),
  context_id      TEXT,
  conversation_id TEXT,
  seq             INTEGER NOT NULL
);
CREATE TABLE crossrefs (
  id           TEXT PRIMARY KEY,
  from_id      TEXT NOT NULL,
  to_id        TEXT NOT NULL,
  kind         TEXT NOT NULL,
  note         TEXT NOT NULL,
  created_at   TEXT NOT NULL,
  created_seq  INTEGER NOT NULL,
  revoked_seq  INTEGER
);
CREATE INDEX crossrefs_by_from ON crossrefs (from_id);
CREATE INDEX crossrefs_by_to ON crossrefs (to_id);
"""

# Sub-blocks are stored as a JSON array inside their block: they are immutable with the block,
# never queried on their own, and one row per block keeps appends to a single INSERT.


# Version 3: retracted blocks (event `block.retracted`). One row per retraction, keyed by the
# block; the block's own row and its full-text row are kept, and the reads filter.
_V3 = """
CREATE TABLE retractions (
  block_id      TEXT PRIMARY KEY,
  context_id    TEXT NOT NULL,
  reason        TEXT NOT NULL,
  retracted_at  TEXT NOT NULL,
  seq           INTEGER NOT NULL UNIQUE
);
CREATE INDEX retractions_by_context ON retractions (context_id);
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


@dataclass(frozen=True)
class Migration:
    """Brings a database from `version - 1` to `version`."""

    version: int
    name: str
    run: Callable[[sqlite3.Connection], None]


def _create_v1(conn: sqlite3.Connection) -> None:
    _run_script(conn, _V1)
    conn.execute(
        "INSERT INTO meta (id, last_seq, last_hash, event_schema) VALUES (1, 0, ?, ?)",
        ("0" * 64, EVENT_SCHEMA_VERSION),
    )
    conn.execute(
        "INSERT INTO focus (id, context_id, conversation_id, seq) VALUES (1, NULL, NULL, 0)"
    )


def _add_fts_seq(conn: sqlite3.Connection) -> None:
    # The writer indexes blocks for search in transactions of their own, after the batch's
    # COMMIT (issue 17): `meta.fts_seq` says how far the index is. Up to v1 every block was
    # indexed in its own batch's transaction, so a v1 database is indexed through last_seq.
    conn.execute("ALTER TABLE meta ADD COLUMN fts_seq INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE meta SET fts_seq = last_seq")


def _add_retractions(conn: sqlite3.Connection) -> None:
    _run_script(conn, _V3)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the v1 schema", _create_v1),
    Migration(2, "record how far the search index is (meta.fts_seq)", _add_fts_seq),
    Migration(3, "add the retractions table", _add_retractions),
)


class UnknownSchema(LocalError):
    """The database's version is newer than this code, or has no migration path."""

    name = "UnknownSchema"

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"state database schema version {found}; this timelined knows {supported}",
            found=found,
            supported=supported,
        )
        self.found = found
        self.supported = supported


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration, each in its own transaction; returns their names."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise UnknownSchema(current, SCHEMA_VERSION)
    applied: list[str] = []
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration.run(conn)
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        applied.append(migration.name)
    return applied
