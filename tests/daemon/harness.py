"""Test harness for the daemon: a real `timelined serve` subprocess, or an in-process server.

Reusable from other suites:

    from tests.daemon.harness import DaemonProcess, inprocess_daemon, short_tempdir

- `DaemonProcess(dir, **config)` writes `dir/config.toml`, starts
  `python -m timelined serve --config dir/config.toml`, waits for the socket to answer
  `GetStatus`, and on `stop()` sends SIGTERM and waits for the exit code.
- `inprocess_daemon(dir)` runs boot recovery, the engine and the Varlink server with the real
  `register_all` and `authorizer` in the current event loop (fast tests, no subprocess); on
  PostgreSQL with `store=` (tests/stores.py).
- `serving(store={"backend": "postgresql", "dsn": ...})`: any config section is an override;
  `Store.overrides()` (tests/stores.py) gives the contract suite's.
- `short_tempdir()`: Unix socket paths must be shorter than 108 bytes, pytest's tmp_path often
  is not; this makes a short directory under /tmp (mode 0755, so other uids can reach it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from timelined.config import (
    AuthConfig,
    Config,
    LogConfig,
    StoreConfig,
    VerifyConfig,
    default_config,
)
from timelined.daemon.app import App
from timelined.daemon.auth import admitter, authorizer
from timelined.daemon.lifecycle import engine_class, log_source
from timelined.daemon.methods import register_all
from timelined.daemon.varlink_setup import map_error, server_limits, service_info
from timelined.errors import LogDamaged
from timelined.ids import utc_now
from timelined.recovery.boot import boot
from timelined.varlink.client import VarlinkClient
from timelined.varlink.errors import ConnectionFailed
from timelined.varlink.server import VarlinkServer, listen_unix

REPO = Path(__file__).resolve().parents[2]

# The gid the shared test daemon treats as read-only, and a uid/gid it does not know.
READ_ONLY_GID = 4242
STRANGER = 65534

# Another uid's client: a stdlib-only script run by the system python, isolated (neither this
# checkout nor the environment's paths), from a world-readable directory (`short_tempdir`), so
# that it runs whatever that uid may not read (a clone in a 0700 directory, a venv under /root).
SYSTEM_PYTHON = "/usr/bin/python3"
PEER_ENV = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}


def as_uid(uid: int, gid: int, groups: tuple[int, ...] = ()) -> list[str]:
    """The command that runs the system python as `uid`/`gid` (and only `groups`)."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        SYSTEM_PYTHON,
        "-I",
    ]


@contextmanager
def short_tempdir(prefix: str = "tl") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def config_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    out: list[str] = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in keys.items())
        out.append("")
    return "\n".join(out)


def default_sections(base: Path) -> dict[str, dict[str, Any]]:
    """A config for tests: state and socket under `base`, socket open to every uid (the
    uid/gid checks of [auth] are what the permission tests exercise)."""
    return {
        "daemon": {
            "state_dir": str(base / "state"),
            "socket_path": str(base / "run" / "tl.sock"),
            "socket_mode": "0666",
            "log_level": "info",
        },
        "log": {"fsync": "always"},
        "verify": {"on_boot": False, "interval_s": 0},
        "auth": {"read_only_gids": [READ_ONLY_GID]},
    }


def merged(
    base: dict[str, dict[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in base.items()}
    for section, keys in overrides.items():
        out.setdefault(section, {}).update(keys)
    return out


class DaemonProcess:
    """`timelined serve` as a subprocess on a config written into `base`."""

    def __init__(self, base: Path, **overrides: Mapping[str, Any]) -> None:
        self.base = base
        self.sections = merged(default_sections(base), overrides)
        self.config_path = base / "config.toml"
        self.socket_path = Path(self.sections["daemon"]["socket_path"])
        self.state_dir = Path(self.sections["daemon"]["state_dir"])
        self.log_path = base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.chmod(0o755)
        self.config_path.write_text(config_text(self.sections), encoding="utf-8")

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "timelined", "serve", "--config", str(self.config_path)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                self.proc = None  # gone: a later `with` starts a new one
                raise RuntimeError(f"the daemon exited with {code} while starting:\n{self.log()}")
            try:
                with VarlinkClient(self.socket_path, timeout=5) as client:
                    client.call("io.timelined.Admin.GetStatus")
                return
            except ConnectionFailed:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the daemon did not answer within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> DaemonProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serving(**overrides: Mapping[str, Any]) -> Iterator[DaemonProcess]:
    """A started daemon on a fresh short temp dir (a fixture's body); its stop must exit 0."""
    with short_tempdir() as base:
        proc = DaemonProcess(base, **overrides).start()
        try:
            yield proc
        finally:
            code = proc.stop()
        assert code == 0, f"the daemon exited {code}:\n{proc.log()}"


@dataclass
class InProcess:
    app: App
    config: Config
    socket_path: Path


def inprocess_config(base: Path, **sections: Any) -> Config:
    sections.setdefault("log", LogConfig(fsync="off"))
    sections.setdefault("verify", VerifyConfig(on_boot=False, interval_s=0))
    sections.setdefault("auth", AuthConfig(read_only_gids=[READ_ONLY_GID]))
    return default_config(base / "state", **sections)


@asynccontextmanager
async def inprocess_daemon(
    base: Path,
    *,
    config: Config | None = None,
    socket_mode: int = 0o666,
    read_only: LogDamaged | None = None,
    store: StoreConfig | None = None,
) -> AsyncIterator[InProcess]:
    """Boot, engine, server with the real handlers and authorizer, in this event loop.

    `read_only`: open the engine read-only with this reason (as after finding log damage).
    `store`: the backend (tests/stores.Store.store_config()), unless `config` is given."""
    config = config or inprocess_config(base, **({} if store is None else {"store": store}))
    booted = await anyio.to_thread.run_sync(boot, config)
    head = booted.head if read_only is None else None
    read_only = read_only or booted.read_only
    try:
        async with engine_class(config).open(config, head=head, read_only=read_only) as engine:
            server = VarlinkServer(
                service_info(),
                limits=server_limits(config.limits),
                map_error=map_error,
            )
            app = App(
                config=config,
                engine=engine,
                boot=booted.report,
                server=server,
                started_at=utc_now(),
                log=log_source(config, engine),
            )
            register_all(server, app)
            server.authorize = authorizer(app)
            server.admit = admitter(app)
            listener = await listen_unix(config.socket_path, socket_mode)
            config.socket_path.parent.chmod(0o755)
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve, listener)
                try:
                    yield InProcess(app, config, config.socket_path)
                finally:
                    await server.shutdown(2.0)
    finally:
        booted.lock.release()
