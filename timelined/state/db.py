"""Opening the state database: one write connection, read-only readers, and the meta row."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from timelined.state.dbapi import DbConn, dialect_of
from timelined.state.model import Meta
from timelined.state.schema import migrate


def open_write(path: Path, *, create: bool = True, mode: int = 0o600) -> sqlite3.Connection:
    """The one write connection: WAL, synchronous=NORMAL (the log is fsynced first), migrated.

    `isolation_level=None` hands transaction control to the caller: the writer issues BEGIN,
    SAVEPOINT and COMMIT itself, exactly as DESIGN.md's write path describes.

    A new database file is created with `mode` whatever the umask; SQLite gives its `-wal` and
    `-shm` files the database file's permissions, so they are never more open than it.
    """
    if not create and not path.exists():
        raise FileNotFoundError(str(path))
    if create:
        _create_with_mode(path, mode)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = OFF")
    # Checkpoints happen on the writer's thread between batches; 4000 pages keeps the WAL small
    # without making each checkpoint long.
    conn.execute("PRAGMA wal_autocheckpoint = 4000")
    conn.execute("PRAGMA cache_size = -16000")
    migrate(conn)
    return conn


def _create_with_mode(path: Path, mode: int) -> None:
    """An empty file at `path` with exactly `mode`, unless there is one (SQLite fills it in)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)  # the umask filtered open's mode
    finally:
        os.close(fd)


def open_scratch(path: Path | str) -> sqlite3.Connection:
    """A throwaway database for replays: no journal, no fsync; it is rebuilt if lost."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -64000")
    migrate(conn)
    return conn


def open_read(path: Path) -> sqlite3.Connection:
    """A read-only connection (never takes a write lock, never sees 'database is locked')."""
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA query_only = ON")
    return conn


def read_meta(conn: DbConn) -> Meta:
    row = conn.execute("SELECT last_seq, last_hash, event_schema FROM meta WHERE id = 1").fetchone()
    return Meta(int(row[0]), str(row[1]), int(row[2]))


def read_fts_seq(conn: DbConn) -> int:
    """How far the search index is: every block with seq <= this has its document."""
    return int(conn.execute("SELECT fts_seq FROM meta WHERE id = 1").fetchone()[0])


def data_version(conn: DbConn) -> int:
    """Moves only when another connection commits to the database (tamper detection).

    Always 0 on PostgreSQL: it has no such counter, and other daemons commit there all the
    time (writer/pg.py)."""
    if dialect_of(conn) != "sqlite":
        return 0
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
