"""Damage a verification recorded, re-checked at the next boot on PostgreSQL: the boot walks the
log table's chain again (recovery/boot.py); a chain that verifies clears the record and takes
writes, a chain still broken keeps the daemon read-only (docs/recovery.md, 'degraded')."""

from __future__ import annotations

import psycopg
import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client_sync import Client
from timelined.errors import LogDamaged
from timelined.recovery.damage import record_damage


def _fill(daemon: DaemonProcess) -> str:
    with daemon, Client(daemon.socket_path) as client:
        conv = client.create_conversation("recorded damage")
        for i in range(5):
            client.append_block(conv.root_context_id, "user", f"block {i}")
        return conv.root_context_id


def test_a_recorded_damage_the_table_no_longer_has_is_cleared_at_boot(pg_dsn: str) -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, store={"backend": "postgresql", "dsn": pg_dsn})
        root = _fill(daemon)
        record = daemon.state_dir / "log-damaged"
        record_damage(record, 3, "hash mismatch: a test's record", None)
        with daemon, Client(daemon.socket_path) as client:
            client.append_block(root, "user", "accepted again")
        assert not record.exists()
        assert "the chain verifies" in daemon.log()


def test_a_recorded_damage_still_in_the_table_keeps_the_daemon_read_only(pg_dsn: str) -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, store={"backend": "postgresql", "dsn": pg_dsn})
        root = _fill(daemon)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the suite's superuser
            conn.execute("ALTER TABLE log DISABLE TRIGGER USER")
            changed = conn.execute(
                "UPDATE log SET line = convert_to(replace(convert_from(line, 'UTF8'), "
                "'block 2', 'block X'), 'UTF8') WHERE convert_from(line, 'UTF8') LIKE '%block 2%'"
            ).rowcount
            assert changed == 1
            conn.execute("ALTER TABLE log ENABLE TRIGGER USER")
        record = daemon.state_dir / "log-damaged"
        record_damage(record, 4, "hash mismatch: a test's record", None)
        with daemon, Client(daemon.socket_path) as client:
            assert len(client.list_blocks(root).blocks) == 5  # reads go on
            with pytest.raises(LogDamaged) as refused:
                client.append_block(root, "user", "refused")
            assert "damaged at seq" in str(refused.value)
        assert record.exists()
