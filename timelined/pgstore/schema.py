"""The PostgreSQL database's schema: the log table beside the state tables, and its version.

The state tables are those of the SQLite state (state/schema.py, version 3) with PostgreSQL's
types: INTEGER → BIGINT, REAL → DOUBLE PRECISION; JSON stays TEXT, so a value is the same
bytes on both backends and the verifier compares them as they are. There is no blocks_fts:
`blocks.tsv` is a generated tsvector column (of the first SEARCH_CHARS characters) under a
GIN index (state/search_pg.py reads it), kept by PostgreSQL in the blocks' own transaction;
`meta.fts_seq` (how far the index is) is generated from `last_seq`, so it always equals it.

`log` holds one row per event: its seq, its hash and the exact line the file log would hold
(trailing newline included). It is append-only: triggers refuse UPDATE, DELETE (per row) and
TRUNCATE (per statement) with SQLSTATE TL001 and a message naming the rule, whoever asks
(`pgstore.sql.LogIsAppendOnly` on the Python side). The daemon's role should also be granted
no more than SELECT, INSERT on it (docs/operations.md); the triggers hold even for an owner.

`meta` (id = 1) is also the head row: each daemon's batch locks it FOR UPDATE first, which
serialises the batches of every daemon on the database into one chain.

`timelined_schema` records the version; `ensure_schema` creates everything in an empty
database, accepts this version, and refuses a newer one or a database that holds tables of
something else (a named error: nothing is created or changed then).
"""

from __future__ import annotations

from typing import Final

from timelined.errors import LocalError
from timelined.events import SCHEMA_VERSION as EVENT_SCHEMA_VERSION
from timelined.pgstore.sql import LOG_APPEND_ONLY_SQLSTATE, PgConnection
from timelined.state.search_pg import SEARCH_CHARS

PG_SCHEMA_VERSION: Final = 1
GENESIS_HASH: Final = "0" * 64
# The advisory lock a schema's creation holds. Any 64-bit key will do; this one is "timelined"
# in ASCII, read as an integer.
SCHEMA_LOCK: Final = 0x74696D656C696E65

# One statement per item: the function body holds semicolons. Run without parameters on the
# raw psycopg connection, so its `%` is PostgreSQL's format placeholder, not psycopg's.
_CREATE: Final[tuple[str, ...]] = (
    """CREATE TABLE timelined_schema (
  id             INTEGER PRIMARY KEY CHECK (id = 1),
  version        INTEGER NOT NULL,
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    """CREATE TABLE log (
  seq   BIGINT PRIMARY KEY CHECK (seq > 0),
  hash  TEXT NOT NULL UNIQUE,
  line  BYTEA NOT NULL
)""",
    f"""CREATE FUNCTION timelined_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'timelined: the log table is append-only: % refused', TG_OP
    USING ERRCODE = '{LOG_APPEND_ONLY_SQLSTATE}';
END
$$""",
    """CREATE TRIGGER log_append_only BEFORE UPDATE OR DELETE ON log
  FOR EACH ROW EXECUTE FUNCTION timelined_log_append_only()""",
    """CREATE TRIGGER log_no_truncate BEFORE TRUNCATE ON log
  FOR EACH STATEMENT EXECUTE FUNCTION timelined_log_append_only()""",
    """CREATE TABLE meta (
  id            INTEGER PRIMARY KEY CHECK (id = 1),
  last_seq      BIGINT NOT NULL,
  last_hash     TEXT NOT NULL,
  event_schema  BIGINT NOT NULL,
  fts_seq       BIGINT GENERATED ALWAYS AS (last_seq) STORED
)""",
    """CREATE TABLE conversations (
  id              TEXT PRIMARY KEY,
  name            TEXT NOT NULL,
  root_context_id TEXT NOT NULL,
  status          TEXT NOT NULL,
  metadata        TEXT NOT NULL,
  archive_reason  TEXT,
  imported_from   TEXT,
  created_at      TEXT NOT NULL,
  created_seq     BIGINT NOT NULL UNIQUE,
  updated_at      TEXT NOT NULL,
  updated_seq     BIGINT NOT NULL
)""",
    """CREATE TABLE contexts (
  id              TEXT PRIMARY KEY,
  conversation_id TEXT NOT NULL,
  parent_id       TEXT,
  status          TEXT NOT NULL,
  reason          TEXT NOT NULL,
  inherit_from    TEXT,
  inherit_last    BIGINT NOT NULL,
  inherit_upto    BIGINT NOT NULL,
  archive_reason  TEXT,
  tags            TEXT NOT NULL,
  created_at      TEXT NOT NULL,
  created_seq     BIGINT NOT NULL,
  updated_at      TEXT NOT NULL,
  updated_seq     BIGINT NOT NULL
)""",
    "CREATE INDEX contexts_by_conversation ON contexts (conversation_id, created_seq)",
    "CREATE INDEX contexts_by_parent ON contexts (parent_id)",
    f"""CREATE TABLE blocks (
  seq            BIGINT PRIMARY KEY,
  id             TEXT NOT NULL UNIQUE,
  context_id     TEXT NOT NULL,
  position       BIGINT NOT NULL,
  role           TEXT NOT NULL,
  content        TEXT NOT NULL,
  timestamp      TEXT NOT NULL,
  time_taken     DOUBLE PRECISION,
  tokens_input   BIGINT,
  tokens_output  BIGINT,
  metadata       TEXT NOT NULL,
  sub_blocks     TEXT NOT NULL,
  tsv            tsvector GENERATED ALWAYS AS
                   (to_tsvector('simple', left(content, {SEARCH_CHARS:d}))) STORED
)""",
    "CREATE UNIQUE INDEX blocks_by_context ON blocks (context_id, position)",
    "CREATE INDEX blocks_search ON blocks USING GIN (tsv)",
    """CREATE TABLE focus (
  id              INTEGER PRIMARY KEY CHECK (id = 1),
  context_id      TEXT,
  conversation_id TEXT,
  seq             BIGINT NOT NULL
)""",
    """CREATE TABLE crossrefs (
  id           TEXT PRIMARY KEY,
  from_id      TEXT NOT NULL,
  to_id        TEXT NOT NULL,
  kind         TEXT NOT NULL,
  note         TEXT NOT NULL,
  created_at   TEXT NOT NULL,
  created_seq  BIGINT NOT NULL,
  revoked_seq  BIGINT
)""",
    "CREATE INDEX crossrefs_by_from ON crossrefs (from_id)",
    "CREATE INDEX crossrefs_by_to ON crossrefs (to_id)",
    """CREATE TABLE retractions (
  block_id      TEXT PRIMARY KEY,
  context_id    TEXT NOT NULL,
  reason        TEXT NOT NULL,
  retracted_at  TEXT NOT NULL,
  seq           BIGINT NOT NULL UNIQUE
)""",
    "CREATE INDEX retractions_by_context ON retractions (context_id)",
)

# The state tables, in the order a rebuild empties them (never `log`).
STATE_TABLES: Final = (
    "conversations",
    "contexts",
    "blocks",
    "focus",
    "crossrefs",
    "retractions",
    "meta",
)


class PgSchemaError(LocalError):
    """The database cannot be used as it is: nothing was created or changed."""

    name = "PgSchemaError"


class ForeignDatabase(PgSchemaError):
    """The database holds tables that are not timelined's; `tables` names them."""

    name = "ForeignDatabase"

    def __init__(self, tables: list[str]) -> None:
        shown = ", ".join(tables[:8]) + (", …" if len(tables) > 8 else "")
        super().__init__(
            f"the database holds tables that are not timelined's ({shown}): "
            "give timelined an empty database of its own",
            tables=tables,
        )
        self.tables = tables


class NewerSchema(PgSchemaError):
    """The database's schema is newer than this timelined knows (`found`, `supported`)."""

    name = "NewerSchema"

    def __init__(self, found: int) -> None:
        super().__init__(
            f"the database's timelined schema is version {found}; this timelined knows "
            f"{PG_SCHEMA_VERSION}: upgrade timelined (never downgrade a database)",
            found=found,
            supported=PG_SCHEMA_VERSION,
        )
        self.found = found
        self.supported = PG_SCHEMA_VERSION


def _public_tables(conn: PgConnection) -> list[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    ).fetchall()
    return [str(r[0]) for r in rows]


def schema_version(conn: PgConnection) -> int | None:
    """The version of a timelined database, None for an empty one; ForeignDatabase else."""
    tables = _public_tables(conn)
    if not tables:
        return None
    if "timelined_schema" not in tables:
        raise ForeignDatabase(tables)
    row = conn.execute("SELECT version FROM timelined_schema WHERE id = 1").fetchone()
    if row is None:
        raise ForeignDatabase(tables)
    return int(row[0])


def ensure_schema(conn: PgConnection) -> bool:
    """Create the schema in an empty database (True), or check an existing one (False).

    The creation is one transaction, serialised by an advisory lock: two daemons starting on
    a new database at once create it once, and the second sees it whole.
    """
    if conn.in_transaction:
        raise PgSchemaError("ensure_schema needs a connection outside any transaction")
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        found = schema_version(conn)
        if found is None:
            create_schema(conn)
        elif found > PG_SCHEMA_VERSION:
            raise NewerSchema(found)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found is None


def create_schema(conn: PgConnection) -> None:
    """Create every table in an empty database, inside the caller's transaction (ensure_schema;
    `timelined migrate`, whose one transaction holds the schema, the log and the state)."""
    for statement in _CREATE:
        conn.raw.execute(statement)
    conn.execute("INSERT INTO timelined_schema (id, version) VALUES (1, ?)", (PG_SCHEMA_VERSION,))
    _initial_rows(conn)


def clear_state(conn: PgConnection) -> None:
    """Empty the state tables back to a new database's (inside the caller's transaction): a
    repair rebuilds them from the log table. `log` is never touched."""
    for table in STATE_TABLES:
        conn.execute(f"DELETE FROM {table}")
    _initial_rows(conn)


def _initial_rows(conn: PgConnection) -> None:
    """The meta (head) row and the focus row of a state that has applied nothing."""
    conn.execute(
        "INSERT INTO meta (id, last_seq, last_hash, event_schema) VALUES (1, 0, ?, ?)",
        (GENESIS_HASH, EVENT_SCHEMA_VERSION),
    )
    conn.execute(
        "INSERT INTO focus (id, context_id, conversation_id, seq) VALUES (1, NULL, NULL, 0)"
    )
