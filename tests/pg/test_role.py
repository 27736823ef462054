"""The daemon's PostgreSQL role as docs/operations.md ("PostgreSQL") grants it: the schema made
by its owner, the daemon's role given SELECT and INSERT on `log` and nothing else there. Such a
daemon serves every method (writes, reads, search, Verify and Repair); that role's UPDATE,
DELETE and TRUNCATE of the log are refused by the server for want of the privilege, before the
table's triggers (which refuse them to the owner too) are reached."""

from __future__ import annotations

import psycopg
import pytest

from tests.daemon.harness import serving
from tests.pgserver import EmbeddedPostgres
from timelined.client import Client
from timelined.commands import NewBlock
from timelined.pgstore.schema import ensure_schema
from timelined.pgstore.sql import connect

# As docs/operations.md gives them (ROLE and DB replaced).
GRANTS = """
CREATE ROLE {role} LOGIN;
GRANT CONNECT ON DATABASE {db} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON timelined_schema TO {role};
GRANT SELECT, INSERT ON log TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE
  ON meta, conversations, contexts, blocks, focus, crossrefs, retractions TO {role};
"""


def test_a_daemon_with_the_documented_grants_serves_and_cannot_rewrite_the_log(
    pg_server: EmbeddedPostgres,
) -> None:
    db = pg_server.create_database("role")
    owner_dsn = pg_server.conninfo(db)
    with connect(owner_dsn) as owner:
        assert ensure_schema(owner)  # the owner (here the superuser) creates the schema
    role = f"tl_daemon_{db}"
    with psycopg.connect(owner_dsn, autocommit=True) as owner_session:
        owner_session.execute(GRANTS.format(role=role, db=db).encode())
    dsn = f"{owner_dsn} user={role}"

    with (
        serving(store={"backend": "postgresql", "dsn": dsn}, log={"fsync": "off"}) as daemon,
        Client(daemon.socket_path, timeout=60) as tl,
    ):
        conv = tl.create_conversation("granted")
        done = tl.append_blocks(
            conv.root_context_id, [NewBlock("user", f"kingfisher {n}") for n in range(5)]
        )
        side = tl.spawn_sidebar(conv.root_context_id, "aside", inherit_last=2)
        tl.append_block(side.id, "user", "in the sidebar")
        tl.retract_block(done[0].id, reason="popped")
        assert len(tl.search_blocks("kingfisher")) == 4
        report = tl.verify(wait=True).result
        assert report is not None and report["state"] == "ok", report
        assert tl.repair() is not None  # rebuilds the state tables: DELETE + INSERT
        after = tl.verify(wait=True).result
        assert after is not None and after["state"] == "ok", after

    with psycopg.connect(dsn, autocommit=True) as daemon_role:
        for sql in ("UPDATE log SET line = line", "DELETE FROM log", "TRUNCATE log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                daemon_role.execute(sql.encode())
        (events,) = daemon_role.execute(b"SELECT count(*) FROM log").fetchone() or (0,)
    assert events >= 9
    pg_server.drop_database(db)
