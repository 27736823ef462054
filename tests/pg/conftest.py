"""Fixtures of the PostgreSQL suite: a fresh database per test, on the session's one server
(`pg_server`, defined in tests/conftest.py so that the whole suite shares it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import EmbeddedPostgres


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """The conninfo of a new, empty database, dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.conninfo(name)
    pg_server.drop_database(name)
