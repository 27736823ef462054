"""What the shared state code needs of a database connection: `DbConn`.

state/apply.py, state/queries.py, state/lookup.py and the writer's rules and hot state run on
the SQLite connections of state/db.py and on pgstore's `PgConnection` alike: both satisfy this
Protocol (execute / executemany returning a cursor whose rows are tuples; transactions by SQL).
A connection may say which SQL it speaks with a `dialect` attribute ("sqlite" when absent):
`dialect_of` reads it, for the few reads whose SQL differs (full-text search).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class DbCursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class DbConn(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> DbCursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> DbCursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def dialect_of(conn: DbConn) -> str:
    """ "sqlite" or "postgresql"."""
    return str(getattr(conn, "dialect", "sqlite"))
