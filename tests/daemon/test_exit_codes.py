"""`timelined serve` exits with a code that says what went wrong, and a log line naming it.

The exit codes are the contract with systemd (RestartPreventExitStatus=78) and operators:
see the docstring of timelined/daemon/lifecycle.py and docs/operations.md.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys

import pytest

from tests.daemon.harness import REPO, DaemonProcess, short_tempdir
from timelined.client import Client
from timelined.errors import TimelinedError


def test_a_refused_config_exits_78_naming_the_key() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, log={"fsync": "sometimes"})
        with pytest.raises(RuntimeError, match="exited with 78"):
            daemon.start(timeout=15)
        assert "log.fsync" in daemon.log()


def test_a_socket_path_taken_by_a_file_exits_71_naming_the_path() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        daemon.socket_path.parent.mkdir(parents=True)
        daemon.socket_path.write_text("not a socket")
        with pytest.raises(RuntimeError, match="exited with 71"):
            daemon.start(timeout=15)
        assert f"cannot listen on {daemon.socket_path}" in daemon.log()
        assert "Traceback" not in daemon.log()
        assert daemon.socket_path.read_text() == "not a socket"  # not taken over
        # The state was opened and closed again as at a stop, marker included: the next start
        # is an ordinary clean one, not a recovery from a crash that did not happen.
        assert (daemon.state_dir / "clean-shutdown").exists()
        daemon.socket_path.unlink()
        with daemon, Client(daemon.socket_path) as tl:
            boot = tl.get_status().boot
            assert (boot.verdict, boot.fast_path) == ("clean", True)


def test_a_passed_socket_that_cannot_be_served_on_exits_71_with_the_marker() -> None:
    """LISTEN_FDS naming a datagram socket (a unit with ListenDatagram=): one line, exit 71,
    the state closed as at a stop. The wrapper sets LISTEN_PID to its own pid, which exec keeps,
    as systemd-socket-activate does."""
    with short_tempdir() as base, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        dgram.bind(str(base / "dgram"))
        daemon = DaemonProcess(base)
        daemon.write_config()
        fd = dgram.fileno()
        wrapper = (
            f"import os, sys; os.dup2({fd}, 3); os.environ.update(LISTEN_PID=str(os.getpid()), "
            f"LISTEN_FDS='1'); os.execv(sys.executable, [sys.executable, '-m', 'timelined', "
            f"'serve', '--config', {str(daemon.config_path)!r}])"
        )
        run = subprocess.run(
            [sys.executable, "-c", wrapper],
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))},
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 71, output
        assert "cannot serve on the socket systemd passed" in output, output
        assert "Traceback" not in output
        assert (daemon.state_dir / "clean-shutdown").exists()


def test_a_marker_that_cannot_be_written_exits_74_and_the_next_boot_recovers() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as tl:
            conv = tl.create_conversation("kept")
            tl.append_block(conv.root_context_id, "user", "acknowledged before the stop")
            marker = daemon.state_dir / "clean-shutdown"
            assert not marker.exists()  # boot consumed it
            marker.mkdir()  # a rename cannot replace a directory: the write fails for real
            code = daemon.stop()
            assert code == 74, daemon.log()
        assert "clean-shutdown marker" in daemon.log()
        assert "Traceback" not in daemon.log()
        shutil.rmtree(marker)
        with daemon, Client(daemon.socket_path) as tl:
            status = tl.get_status()
            assert not status.boot.fast_path  # no marker: the checking path
            assert status.boot.verdict == "recovered"
            blocks = tl.list_blocks(conv.root_context_id).blocks
            assert [b.content for b in blocks] == ["acknowledged before the stop"]


def test_a_state_database_locked_by_another_process_is_fatal_exit_74_then_recovered() -> None:
    """A real fatal storage error while serving: another process holds SQLite's write lock, so
    the batch's BEGIN IMMEDIATE fails after the busy timeout. Nothing of the batch is
    acknowledged, the daemon stops with 74 (systemd restarts it), the next boot recovers."""
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path, timeout=30) as tl:
            ctx = tl.create_conversation("kept").root_context_id
            tl.append_block(ctx, "user", "acknowledged before the lock")
            holder = sqlite3.connect(daemon.state_dir / "state.db", isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                with pytest.raises(TimelinedError):
                    tl.append_block(ctx, "user", "never acknowledged", id="blk_refused")
                assert daemon.proc is not None
                code = daemon.proc.wait(30)
                daemon.proc = None
            finally:
                holder.close()
        assert code == 74, daemon.log()
        assert "state database" in daemon.log()
        assert "Traceback" not in daemon.log()
        with daemon, Client(daemon.socket_path) as tl:
            status = tl.get_status()
            assert status.fatal is None
            assert status.boot.verdict == "recovered"
            contents = [b.content for b in tl.list_blocks(ctx).blocks]
            assert contents == ["acknowledged before the lock"]


def test_a_log_directory_that_is_a_file_exits_74_naming_it() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        daemon.state_dir.mkdir(parents=True)
        (daemon.state_dir / "log").write_text("not a directory")
        with pytest.raises(RuntimeError, match="exited with 74"):
            daemon.start(timeout=15)
        log = daemon.log()
        assert "cannot serve" in log and str(daemon.state_dir / "log") in log, log
        assert "Traceback" not in log, log


def test_a_first_boot_says_so_and_the_next_takes_the_fast_path() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            first = daemon.log()
        assert "boot verdict clean (first boot: a new, empty state directory)" in first
        assert "recovery path" not in first
        with daemon:
            assert "boot verdict clean (fast path)" in daemon.log()


def test_verify_takes_the_state_directory_from_config() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            pass
        done = subprocess.run(
            [sys.executable, "-m", "timelined", "verify", "--config", str(daemon.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert str(daemon.state_dir) in done.stdout + done.stderr
        (base / "bad.toml").write_text('[log]\nfsync = "sometimes"\n')
        done = subprocess.run(
            [sys.executable, "-m", "timelined", "verify", "--config", str(base / "bad.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 78 and "log.fsync" in done.stderr, done.stderr
