"""A real daemon as a subprocess: `python -m timelined serve --config PATH`.

READY is taken from the daemon's own sd_notify datagram: the benchmark binds a datagram socket,
passes it as `NOTIFY_SOCKET`, and stamps the arrival of `READY=1` against the moment just before
the process was spawned. So "time to READY" includes interpreter start-up and imports, exactly
what a service manager waits for. The code under test is compiled to bytecode first, as pip does
at install: where `PYTHONDONTWRITEBYTECODE` is set (the systemd unit sets it; so do some shells)
and the sources changed since their `.pyc` files, every start would otherwise compile ~90
modules again, ~0.3 s of CPU that a packaged install never pays.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from benchmarks.env import short_socket_path
from benchmarks.wire import ADMIN, WireClient, answers
from timelined.config import Config, load_config


def write_config(
    directory: Path,
    *,
    fsync: str = "always",
    verify_on_boot: bool = False,
    extra: str = "",
) -> Config:
    """A config.toml in `directory` with its state in `directory/state`; returns it loaded."""
    sock = short_socket_path(directory, "s")
    text = (
        "[daemon]\n"
        f'state_dir = "{directory / "state"}"\n'
        f'socket_path = "{sock}"\n'
        'log_level = "warning"\n'
        "[log]\n"
        f'fsync = "{fsync}"\n'
        "[verify]\n"
        f"on_boot = {'true' if verify_on_boot else 'false'}\n"
        "interval_s = 0\n"
        "[limits]\n"
        "max_connections = 1024\n"
        "idle_timeout_s = 0\n"
        f"{extra}"
    )
    path = directory / "config.toml"
    path.write_text(text)
    return load_config(path)


_compiled: set[str] = set()


def compile_code_under_test() -> None:
    """Write the bytecode of the `timelined` the daemons start (`python -m timelined` from this
    working directory), once per process; a no-op for modules whose `.pyc` is current."""
    spec = importlib.util.find_spec("timelined")
    if spec is None or spec.origin is None:
        return
    package = str(Path(spec.origin).parent)
    if package not in _compiled:
        compileall.compile_dir(package, quiet=2)  # an unwritable tree: as before
        _compiled.add(package)


class Daemon:
    """One daemon process on `config`; `start()` returns once READY=1 arrived."""

    def __init__(self, config: Config) -> None:
        assert config.source is not None
        self.config = config
        self.dir = config.source.parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.answer_s: float | None = None
        self.status_texts: list[str] = []
        self._log: IO[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.config.socket_path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 600.0) -> float:
        """Spawn and wait for READY=1; returns seconds from spawn to READY."""
        compile_code_under_test()
        notify_path = short_socket_path(self.dir, "n")
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        env.pop("WATCHDOG_USEC", None)
        env.pop("LISTEN_FDS", None)
        self._log = (self.dir / "daemon.log").open("ab")
        try:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "timelined", "serve", "--config", str(self.config.source)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
            )
            notify.settimeout(0.05)
            deadline = started + timeout
            while self.ready_s is None:
                try:
                    data = notify.recv(4096)
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"the daemon exited with {self.proc.returncode} before READY; "
                            f"see {self.dir / 'daemon.log'}: {self.log_tail()}"
                        ) from None
                    if time.perf_counter() > deadline:
                        raise RuntimeError("the daemon did not get READY in time") from None
                    continue
                now = time.perf_counter()
                for line in data.decode(errors="replace").splitlines():
                    if line == "READY=1":
                        self.ready_s = now - started
                    elif line.startswith("STATUS="):
                        self.status_texts.append(line[7:])
        finally:
            notify.close()
            notify_path.unlink(missing_ok=True)
        # READY comes after the socket is listening: the first answer follows at once.
        while not answers(self.socket_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited after READY: {self.log_tail()}")
            time.sleep(0.005)
        self.answer_s = time.perf_counter() - started
        return self.ready_s

    def client(self) -> WireClient:
        return WireClient(self.socket_path)

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            status: dict[str, Any] = c.call(f"{ADMIN}.GetStatus")["status"]
            return status

    def vm_hwm_mib(self) -> float:
        """Peak resident set size of the daemon so far (VmHWM), MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait: the clean stop that writes the marker."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the daemon did not stop on SIGTERM") from None
        self._close_log()
        return code

    def kill(self) -> None:
        """kill -9: no marker, whatever was in flight is cut off."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close_log()

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def log_tail(self, n: int = 2000) -> str:
        path = self.dir / "daemon.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ensure_dead()
