"""pgstore/sql.py: the translation of the shared SQL, and PgConnection against a real server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import psycopg
import pytest

from timelined.errors import InvalidArgument
from timelined.pgstore import sql
from timelined.pgstore.sql import (
    PgConnection,
    PgIntegrityError,
    PgOperationalError,
    UntranslatableSQL,
    translate,
)


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT 1 FROM t WHERE a = ? AND b = ?", "SELECT 1 FROM t WHERE a = %s AND b = %s"),
        ("SELECT ?1, ?2, ?1", "SELECT %(p1)s, %(p2)s, %(p1)s"),
        ("SELECT ?12 FROM t", "SELECT %(p12)s FROM t"),
        ("SELECT 'a%b' || ?", "SELECT 'a%%b' || %s"),
        ("SELECT x % 2 FROM t", "SELECT x %% 2 FROM t"),
        ("SELECT '?' || ?", "SELECT '?' || %s"),
        ("SELECT 'it''s ?' || ?", "SELECT 'it''s ?' || %s"),
        ('SELECT "we?ird" FROM t WHERE a = ?', 'SELECT "we?ird" FROM t WHERE a = %s'),
        ("BEGIN IMMEDIATE", "BEGIN"),
        ("  begin deferred ", "BEGIN"),
        ("BEGIN EXCLUSIVE TRANSACTION", "BEGIN"),
        ("BEGIN", "BEGIN"),
        ("SAVEPOINT command", "SAVEPOINT command"),
        ("ROLLBACK TO command", "ROLLBACK TO command"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?)",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING",
        ),
    ],
)
def test_translate(sqlite: str, postgres: str) -> None:
    assert translate(sqlite) == postgres


@pytest.mark.parametrize(
    "statement",
    [
        "PRAGMA user_version",
        "INSERT OR REPLACE INTO t VALUES (?)",
        "SELECT ?, ?1",  # SQLite allows the mix; nothing in timelined needs it
        "INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING a",  # the clause would go after it
    ],
)
def test_untranslatable_is_refused_by_name(statement: str) -> None:
    with pytest.raises(UntranslatableSQL):
        translate(statement)


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[PgConnection]:
    with sql.connect(pg_dsn) as c:
        c.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, x DOUBLE PRECISION)")
        yield c


def test_rows_are_tuples_like_sqlite3(conn: PgConnection) -> None:
    conn.executemany(
        "INSERT INTO t (id, name, x) VALUES (?, ?, ?)", [(1, "a", 0.5), (2, "b", None)]
    )
    assert conn.execute("SELECT id, name, x FROM t ORDER BY id").fetchall() == [
        (1, "a", 0.5),
        (2, "b", None),
    ]
    assert conn.execute("SELECT name FROM t WHERE id = ?", (3,)).fetchone() is None
    assert [r for r in conn.execute("SELECT id FROM t WHERE id > ?1 AND ?1 = 1", (1,))] == [
        (2,),
    ]
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_numbered_parameters_repeat_and_may_skip(conn: PgConnection) -> None:
    """apply.INSERT_BLOCK binds ?4 (the position) but never uses it: the subquery computes it."""
    conn.execute("INSERT INTO t (id, name) VALUES (?1, ?3)", (7, "unused", "seven"))
    assert conn.execute("SELECT name FROM t WHERE id = ?1 AND ?1 = 7", (7,)).fetchone() == (
        "seven",
    )


def test_transactions_are_sql_like_the_sqlite_connections(conn: PgConnection) -> None:
    assert not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE")
    assert conn.in_transaction
    conn.execute("INSERT INTO t (id, name) VALUES (1, 'a')")
    conn.execute("SAVEPOINT command")
    conn.execute("INSERT INTO t (id, name) VALUES (2, 'b')")
    conn.execute("ROLLBACK TO command")
    conn.execute("RELEASE command")
    conn.execute("COMMIT")
    assert not conn.in_transaction
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t (id, name) VALUES (3, 'c')")
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_errors_take_the_sqlite3_paths(conn: PgConnection) -> None:
    conn.execute("INSERT INTO t (id, name) VALUES (1, 'a')")
    with pytest.raises(sqlite3.IntegrityError) as dup:
        conn.execute("INSERT INTO t (id, name) VALUES (1, 'again')")
    assert isinstance(dup.value, PgIntegrityError)
    assert dup.value.sqlstate == "23505"  # unique_violation
    assert isinstance(dup.value.__cause__, psycopg.errors.UniqueViolation)
    with pytest.raises(sqlite3.OperationalError) as bad:
        conn.execute("SELECT nosuchcolumn FROM t")
    assert isinstance(bad.value, PgOperationalError)
    assert bad.value.sqlstate == "42703"  # undefined_column
    # A refused statement inside a transaction leaves it to the caller's ROLLBACK, as SQLite.
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.Error):
        conn.execute("INSERT INTO t (id, name) VALUES (1, 'dup')")
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT name FROM t").fetchall() == [("a",)]


def test_a_lost_connection_is_an_operational_error(conn: PgConnection, pg_dsn: str) -> None:
    pid = conn.raw.info.backend_pid
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELECT 1")


def test_connect_keeps_the_password_out_of_the_conninfo(pg_dsn: str) -> None:
    secret = "s3cret"  # noqa: S105 - a test value
    with sql.connect(pg_dsn, password=secret) as c:
        # trust auth ignores it; the point is where it went: beside the conninfo, not in it
        assert secret not in pg_dsn
        assert c.raw.info.password == secret
        assert c.execute("SELECT current_setting('application_name')").fetchone() == ("timelined",)


def test_connect_failure_is_an_operational_error(tmp_path: object) -> None:
    with pytest.raises(sqlite3.OperationalError):
        sql.connect(f"host={tmp_path} dbname=nothing connect_timeout=2")


def test_a_nul_in_text_is_a_named_refusal_and_the_transaction_survives(
    conn: PgConnection,
) -> None:
    """SQLite keeps U+0000 in TEXT, PostgreSQL cannot: InvalidArgument, not an SQL error that
    the writer would treat as a storage failure."""
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t (id, name) VALUES (1, 'kept')")
    with pytest.raises(InvalidArgument, match="U\\+0000"):
        conn.execute("INSERT INTO t (id, name) VALUES (?, ?)", (2, "a\x00b"))
    with pytest.raises(InvalidArgument):
        conn.executemany("INSERT INTO t (id, name) VALUES (?, ?)", [(3, "ok"), (4, "\x00")])
    conn.execute("COMMIT")
    # as sqlite3's executemany: the rows before the refused one went in (the caller's
    # savepoint decides whether they stay), and the transaction could commit
    assert conn.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (3,)]
