"""The SQLite-flavoured SQL of the shared state code, run on PostgreSQL.

state/apply.py, state/queries.py, state/lookup.py, writer/rules.py and writer/hotstate.py are
written once, in SQLite's dialect, over a `DbConn` (state/dbapi.py). `PgConnection` is a
`DbConn` over a psycopg connection: each statement goes through `translate` (cached), its
parameters are passed on unchanged, and its rows come back as tuples, as sqlite3's do. The
shared SQL keeps to what both dialects read the same way; `translate` covers the few spellings
that differ only in syntax:

- `?` → `%s`; numbered `?1`, `?2` → `%(p1)s`, `%(p2)s` (a number may repeat, as in SQLite;
  the positional parameters are handed to psycopg as a mapping);
- a literal `%` → `%%` (psycopg reads `%` as a placeholder everywhere, even inside quotes);
- `BEGIN IMMEDIATE` / `DEFERRED` / `EXCLUSIVE` → `BEGIN` (a daemon's batches serialise on the
  head row, locked FOR UPDATE, not on a database-wide write lock);
- `INSERT OR IGNORE INTO …` → `INSERT INTO … ON CONFLICT DO NOTHING`.

What has no translation (`PRAGMA`, `INSERT OR REPLACE`) raises `UntranslatableSQL` before
anything reaches the server.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import pq

from timelined.errors import InvalidArgument, LocalError
from timelined.state.dbapi import DbConn

DIALECT: Final = "postgresql"

# The SQLSTATE the log table's triggers raise (pgstore/schema.py): a class of its own, so no
# PostgreSQL error is mistaken for it.
LOG_APPEND_ONLY_SQLSTATE: Final = "TL001"


class UntranslatableSQL(LocalError, ValueError):
    """A statement the PostgreSQL adapter cannot run (a bug in the shared SQL, not bad input)."""

    name = "UntranslatableSQL"


# Quoted text is copied as it is (a `?` inside quotes is no placeholder), except that a `%`
# there too must be doubled.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?(\d*)|%")
_BEGIN = re.compile(r"^\s*BEGIN\s+(?:IMMEDIATE|DEFERRED|EXCLUSIVE)(?:\s+TRANSACTION)?\s*$", re.I)
_OR_IGNORE = re.compile(r"^(\s*INSERT)\s+OR\s+IGNORE\b", re.I)
_REFUSED = re.compile(r"^\s*(?:PRAGMA\b|INSERT\s+OR\s+(?:REPLACE|ROLLBACK|ABORT|FAIL)\b)", re.I)


@lru_cache(maxsize=2048)
def _translate(sql: str) -> tuple[str, bool]:
    """(PostgreSQL text, whether its parameters are numbered, hence passed as a mapping)."""
    if _REFUSED.match(sql):
        raise UntranslatableSQL(f"no PostgreSQL translation for: {sql[:80]!r}")
    if _BEGIN.match(sql):
        return "BEGIN", False
    kinds: set[str] = set()

    def token(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "%":
            return "%%"
        if text[0] in "'\"":
            return text.replace("%", "%%")
        number = m.group(1)
        kinds.add("numbered" if number else "plain")
        return f"%(p{number})s" if number else "%s"

    out = _TOKENS.sub(token, sql)
    if len(kinds) > 1:
        raise UntranslatableSQL(f"both ? and ?N placeholders in: {sql[:80]!r}")
    if _OR_IGNORE.match(out):
        if re.search(r"\bRETURNING\b|\bON\s+CONFLICT\b", out, re.I):
            raise UntranslatableSQL(f"INSERT OR IGNORE with its own clauses: {sql[:80]!r}")
        out = _OR_IGNORE.sub(r"\1", out).rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    return out, "numbered" in kinds


def translate(sql: str) -> str:
    """The PostgreSQL (psycopg) text of an SQLite-flavoured statement (cached)."""
    return _translate(sql)[0]


def _arguments(numbered: bool, params: Sequence[Any] | Mapping[str, Any]) -> Any:
    if not numbered or isinstance(params, Mapping):
        return params
    return {f"p{i}": value for i, value in enumerate(params, 1)}


# --- errors ------------------------------------------------------------------------------------
#
# The writer, replay and recovery already decide what a database error means by catching
# sqlite3's classes (`except sqlite3.Error`, `sqlite3.IntegrityError`). A psycopg error raised
# through them as one of these subclasses takes the same, already tested, paths: a constraint
# refused is an IntegrityError, everything else (a lost connection, a serialisation failure, a
# statement the server refused) an OperationalError. The psycopg error stays as `__cause__` and
# its SQLSTATE as `.sqlstate`.


# Each is a LocalError too (sqlite3's class first: its paths decide), with the SQLSTATE.


class PgIntegrityError(sqlite3.IntegrityError, LocalError):
    """PostgreSQL refused a constraint (as sqlite3.IntegrityError); `sqlstate` says which."""

    name = "PgIntegrityError"

    def __init__(self, message: str, sqlstate: str | None) -> None:
        LocalError.__init__(self, message, sqlstate=sqlstate)
        self.sqlstate = sqlstate


class PgOperationalError(sqlite3.OperationalError, LocalError):
    """Any other PostgreSQL failure (as sqlite3.OperationalError); `sqlstate` when it has one."""

    name = "PgOperationalError"

    def __init__(self, message: str, sqlstate: str | None) -> None:
        LocalError.__init__(self, message, sqlstate=sqlstate)
        self.sqlstate = sqlstate


class LogIsAppendOnly(PgIntegrityError):
    """The log table refused an UPDATE, DELETE or TRUNCATE (its triggers: pgstore/schema.py)."""

    name = "LogIsAppendOnly"


def map_error(exc: psycopg.Error) -> sqlite3.DatabaseError | InvalidArgument:
    if exc.sqlstate is None and isinstance(exc, psycopg.DataError) and "NUL" in str(exc):
        return _nul_refused()
    # The primary message only: str(exc) adds the server's CONTEXT lines (PL/pgSQL frames).
    message = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
    if exc.sqlstate == LOG_APPEND_ONLY_SQLSTATE:
        return LogIsAppendOnly(message, exc.sqlstate)
    if isinstance(exc, psycopg.IntegrityError):
        return PgIntegrityError(message, exc.sqlstate)
    return PgOperationalError(message, exc.sqlstate)


def refuse_nul(line: bytes) -> None:
    """Raise InvalidArgument when a log line's JSON holds a NUL in a string (an unescaped
    `\\u0000`): what PostgreSQL would refuse at the INSERT, found before anything is written,
    so that it is the one command's refusal and not its batch's undoing."""
    i = line.find(b"\\u0000")
    while i >= 0:
        slashes = 0
        while i - slashes > 0 and line[i - slashes - 1] == 0x5C:  # backslashes before it
            slashes += 1
        if slashes % 2 == 0:  # not itself an escaped backslash followed by "u0000"
            raise _nul_refused()
        i = line.find(b"\\u0000", i + 1)


def _nul_refused() -> InvalidArgument:
    # SQLite stores U+0000 inside TEXT; PostgreSQL cannot (psycopg refuses it before sending,
    # so the transaction is intact): a named refusal of the value, never an InternalError.
    return InvalidArgument("text", "PostgreSQL cannot store the character U+0000 (NUL) in text")


def _unstorable(exc: ValueError) -> Exception:
    """psycopg raises a ValueError for some values it cannot send (a NUL in a text)."""
    return _nul_refused() if "NUL" in str(exc) else exc


# --- the connection ----------------------------------------------------------------------------


class PgConnection:
    """A psycopg connection that speaks like the state's sqlite3 connections (a `DbConn`).

    In autocommit mode, as the sqlite3 connections opened with `isolation_level=None`: the
    caller opens and ends transactions with SQL (`BEGIN`, `SAVEPOINT`, `COMMIT`). Not safe for
    concurrent use, like any DB-API connection: one thread (the writer's, a reader's) at a time.
    """

    dialect: Final = DIALECT
    # state/apply.py writes no blocks_fts rows: PostgreSQL indexes blocks.content itself, in a
    # generated tsvector column (pgstore/schema.py).
    search_index: Final = False

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        if not conn.autocommit:
            conn.autocommit = True
        self._conn = conn

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection itself (LISTEN/NOTIFY, COPY, server settings)."""
        return self._conn

    def execute(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), /
    ) -> psycopg.Cursor[Any]:
        query, numbered = _translate(sql)
        try:
            return self._conn.execute(query, _arguments(numbered, parameters))
        except psycopg.Error as exc:
            raise map_error(exc) from exc
        except ValueError as exc:
            raise _unstorable(exc) from exc

    def executemany(
        self, sql: str, seq_of_parameters: Iterable[Sequence[Any] | Mapping[str, Any]], /
    ) -> psycopg.Cursor[Any]:
        query, numbered = _translate(sql)
        cursor = self._conn.cursor()
        try:
            cursor.executemany(query, (_arguments(numbered, p) for p in seq_of_parameters))
        except psycopg.Error as exc:
            raise map_error(exc) from exc
        except ValueError as exc:
            raise _unstorable(exc) from exc
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(conninfo: str, password: str | None = None, **kwargs: Any) -> PgConnection:
    """A `PgConnection` to `conninfo` (libpq keywords or a URI).

    `password` (read from the configured password file) is passed beside the conninfo, never
    inside it, so nothing that prints the conninfo prints the password.
    """
    extra: dict[str, Any] = {"application_name": "timelined", **kwargs}
    if password is not None:
        extra["password"] = password
    try:
        conn = psycopg.connect(conninfo, autocommit=True, **extra)
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    return PgConnection(conn)


if TYPE_CHECKING:
    # mypy checks here that the shared state code can take a PgConnection.
    _IS_A_DBCONN: type[DbConn] = PgConnection
