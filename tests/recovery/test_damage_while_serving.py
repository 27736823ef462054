"""Damage the verifier finds while the daemon serves: writes refused, GetStatus says so, no
clean-shutdown marker, and a record that makes the next boots walk the whole chain: still damaged,
they start read-only (without waiting for a verification); restored, writes come back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client import Client
from timelined.ctl.report_text import render_summary
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

        assert (daemon.state_dir / "log-damaged").exists()

        # The boot itself finds it again: no verification runs (on_boot off) and yet the very
        # first call sees a read-only daemon, with the boot's verdict `degraded`.
        daemon.sections["verify"]["on_boot"] = False
        with daemon.start(), Client(daemon.socket_path, timeout=10) as client:
            status = client.get_status()
            assert status.read_only is not None and "damaged at seq 2" in status.read_only
            assert status.boot.verdict == "degraded"
            with pytest.raises(LogDamaged):
                client.append_block(root, "user", "still refused")
            assert daemon.stop() == 0

        # An operator restores the segment: the next boot walks the chain, finds it whole,
        # removes the record and takes writes again.
        _flip_inside_second_line(segment)
        with daemon.start(), Client(daemon.socket_path, timeout=10) as client:
            status = client.get_status()
            assert status.read_only is None, status.read_only
            assert client.append_block(root, "user", "accepted again").seq > 0
            # Not "had not stopped cleanly": the missing marker was the read-only run's choice.
            report = client.get_recovery_report()
            assert report is not None and report.read_only_before, report
            assert "The last run served read-only" in render_summary(report)
            assert daemon.stop() == 0
        assert not (daemon.state_dir / "log-damaged").exists()
