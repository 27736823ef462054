"""Damage the verifier finds while the daemon serves: writes refused, STATUS and GetStatus say
so, no clean-shutdown marker, and the next boot's verification finds it again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client import Client
from timelined.errors import LogDamaged


def _flip_inside_second_line(segment: Path) -> None:
    data = bytearray(segment.read_bytes())
    data[data.index(b"\n") + 60] ^= 1
    with segment.open("r+b") as fh:  # in place: the writer's file stays the same file
        fh.write(bytes(data))


def _wait_read_only(client: Client, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_status()
        if status.read_only is not None:
            return status.read_only
        time.sleep(0.1)
    raise AssertionError("the daemon did not go read-only")


def test_damage_found_while_serving() -> None:
    with short_tempdir("tld") as base:
        # The harness turns the boot's verification off for speed; this test needs it.
        daemon = DaemonProcess(base, verify={"on_boot": True, "interval_s": 0})
        with daemon.start(), Client(daemon.socket_path, timeout=10) as client:
            root = client.create_conversation("kept").root_context_id
            for n in range(5):
                client.append_block(root, "user", f"block {n}")
            segment = sorted((daemon.state_dir / "log").iterdir())[0]
            _flip_inside_second_line(segment)
            report = client.verify(wait=True)
            assert report.result is not None and report.result["state"] == "damaged", report
            reason = _wait_read_only(client)
            assert "damaged at seq 2" in reason
            with pytest.raises(LogDamaged, match="seq 2"):
                client.append_block(root, "user", "refused")
            assert client.list_blocks(root).blocks  # reads go on
            assert daemon.stop() == 0  # (leaving the `with` stops it on a failure)
        assert not (daemon.state_dir / "clean-shutdown").exists()

        # No marker: the checking path; the boot's verification finds the damage again.
        with daemon.start(), Client(daemon.socket_path, timeout=10) as client:
            assert "damaged at seq 2" in _wait_read_only(client)
            assert daemon.stop() == 0
