"""The state directory is private whatever the umask the daemon was started with (issue 18):
0700 and every file in it 0600, or 0750/0640 with `[daemon] state_group`; a looser directory
left by an older version is tightened at boot, with a log line."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.daemon.harness import STRANGER, DaemonProcess, short_tempdir
from timelined.client import Client

READ_STATE = """import sys
try:
    open(sys.argv[1], "rb").read(16)
except PermissionError:
    sys.exit(3)
"""
AS_STRANGER = ["setpriv", f"--reuid={STRANGER}", f"--regid={STRANGER}", "--clear-groups"]


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(state_dir: Path) -> dict[str, int]:
    found = {}
    for path in [state_dir, *state_dir.rglob("*")]:
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            found[str(path.relative_to(state_dir))] = stat.S_IMODE(st.st_mode)
    return found


def _busy(daemon: DaemonProcess) -> None:
    """Enough writes for every kind of file: log segments, state.db with -wal and -shm, and the
    checkpoint key (created just after READY: asking for it waits for it)."""
    with Client(daemon.socket_path) as tl:
        root = tl.create_conversation("private").root_context_id
        for i in range(20):
            tl.append_block(root, "user", f"secret {i}")
        tl.get_checkpoint_key()


def _stranger_reads(path: Path) -> int:
    with short_tempdir("tlread") as where:
        script = where / "read.py"
        script.write_text(READ_STATE)
        script.chmod(0o644)
        done = subprocess.run(
            [*AS_STRANGER, "/usr/bin/python3", "-I", str(script), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode in (0, 3), done.stderr
    return done.returncode


def test_the_state_is_private_under_umask_022() -> None:
    with short_tempdir() as base, _umask(0o022):
        daemon = DaemonProcess(base, log={"segment_bytes": 4096})
        with daemon:
            _busy(daemon)
            modes = _modes(daemon.state_dir)
            assert {"state.db", "state.db-wal", "state.db-shm", "lock"} <= set(modes)
            assert len([p for p in modes if p.startswith("log/")]) > 1, modes
            loose = {p: oct(m) for p, m in modes.items() if m & 0o077}
            assert not loose, loose
            assert modes["."] == 0o700 and modes["state.db"] == 0o600
            assert _stranger_reads(daemon.state_dir / "state.db") == 3
        modes = _modes(daemon.state_dir)  # after the stop: marker, reports
        assert "clean-shutdown" in modes and any(p.startswith("reports/") for p in modes)
        assert not {p: oct(m) for p, m in modes.items() if m & 0o077}


def test_a_loose_state_directory_is_tightened_at_boot() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon:
            _busy(daemon)
        for path in [daemon.state_dir, *daemon.state_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # as an older version left them
        assert _stranger_reads(daemon.state_dir / "state.db") == 0
        with daemon:
            assert "tightened the permissions of" in daemon.log()
            assert not {p: oct(m) for p, m in _modes(daemon.state_dir).items() if m & 0o077}
            assert _stranger_reads(daemon.state_dir / "state.db") == 3


def test_state_group_makes_the_state_readable_by_that_group_only() -> None:
    gid = os.getgid()
    with short_tempdir() as base, _umask(0o022):
        daemon = DaemonProcess(base, daemon={"state_group": str(gid)})
        with daemon:
            _busy(daemon)
            modes = _modes(daemon.state_dir)
            # The checkpoint signing key stays the daemon's alone: a reader of the state who
            # could read it could sign a rewritten history (docs/transparency.md).
            assert modes.pop("keys/checkpoint.key") == 0o600
            assert modes.pop("keys") & 0o077 == 0
            for rel, mode in modes.items():
                path = daemon.state_dir / rel
                want = 0o2750 if path.is_dir() else 0o640
                assert mode == want, (rel, oct(mode))
                assert path.stat().st_gid == gid
