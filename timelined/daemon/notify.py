"""The systemd notify protocol (sd_notify(3)) without a library: one datagram per message.

`NOTIFY_SOCKET` names an AF_UNIX datagram socket: a path, or `@name` for an abstract one. A
message is newline-separated `KEY=value` assignments. Without `NOTIFY_SOCKET` every call is a
no-op, so the daemon runs the same way in a terminal, in tests and under systemd.

Sending never raises: a lost notification is logged at debug level and the daemon carries on,
because a status line must never be the reason a daemon that keeps data dies.

The STATUS texts the daemon shows (`systemctl status timelined`) are built by `StatusText`, so
that docs/operations.md can describe each one and the code cannot drift from it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

import anyio

log = logging.getLogger(__name__)

# A datagram send blocks only while PID 1's receive queue is full; bound the stall so that a
# wedged service manager cannot freeze the event loop for long.
_SEND_TIMEOUT_S = 1.0


def _address(value: str) -> str | bytes | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None when it is not one we speak."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: a leading NUL instead of the '@', no terminating NUL.
        return b"\0" + os.fsencode(value[1:])
    return None


def _clean(value: str) -> str:
    """One assignment per line: a newline inside a value would forge another assignment."""
    return value.replace("\r", " ").replace("\n", " ")


class Notifier:
    """Sends sd_notify messages to `NOTIFY_SOCKET`; a no-op when there is none."""

    def __init__(self, notify_socket: str | None = None) -> None:
        self._target = notify_socket or None
        self._address = _address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.debug("NOTIFY_SOCKET=%r is not a path or @abstract name; ignoring", notify_socket)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the writer thread may send ERRNO= before a fatal exit

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """A notifier for `NOTIFY_SOCKET`; `unset=True` removes it so children don't inherit it."""
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET")
        if unset:
            env.pop("NOTIFY_SOCKET", None)
        return cls(value)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def target(self) -> str | None:
        """The NOTIFY_SOCKET value this notifier sends to, as given."""
        return self._target

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments as one datagram; True if it was sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s (%r)", self._target, exc, payload[:80])
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload) finished and the socket is being served."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={_clean(status)}")

    def status(self, text: str) -> bool:
        """STATUS=: a one-line, human-readable state shown by `systemctl status`."""
        return self.notify(f"STATUS={_clean(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: a clean shutdown began."""
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", f"STATUS={_clean(status)}")

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd ≥ 253 requires it); end with ready()."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
        if status is not None:
            fields.append(f"STATUS={_clean(status)}")
        return self.notify(*fields)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """WATCHDOG=trigger: ask systemd to act as if the watchdog timed out."""
        return self.notify("WATCHDOG=trigger")

    def extend_timeout(self, usec: int) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for `usec` more from now (long recovery, slow stop)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(usec))}")

    def errno(self, n: int) -> bool:
        """ERRNO=: the errno-style reason of a failure, sent just before a failing exit."""
        return self.notify(f"ERRNO={int(n)}")

    def close(self) -> None:
        """Close the datagram socket (idempotent; a later send opens a new one)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for.

    WATCHDOG_PID, when set, must be this process: the variable may have been inherited by a
    child that is not the service's main process.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("WATCHDOG_USEC=%r is not an integer; watchdog off", raw)
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


async def run_watchdog(notifier: Notifier, interval: float | None) -> None:
    """Ping WATCHDOG=1 every `interval` seconds until cancelled; returns at once if disabled.

    It runs as a task on the daemon's event loop on purpose: if the loop is stuck, the pings
    stop and systemd restarts the daemon (WatchdogSignal=, default SIGABRT).
    """
    if interval is None or interval <= 0 or not notifier.enabled:
        return
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


class StatusText:
    """The STATUS= lines the daemon shows; docs/operations.md explains each one."""

    @staticmethod
    def booting() -> str:
        return "booting: reading config, taking the state lock"

    @staticmethod
    def recovering(done: int, total: int) -> str:
        return f"recovering: rolling forward {done}/{total} events"

    @staticmethod
    def serving(last_seq: int, socket_path: str) -> str:
        return f"serving on {socket_path}, log at seq {last_seq}"

    @staticmethod
    def verifying(last_seq: int) -> str:
        return f"serving; verifying chain and state up to seq {last_seq}"

    @staticmethod
    def drift_found(differences: int, report_id: str) -> str:
        return f"serving; DRIFT FOUND: {differences} differences, see report {report_id}"

    @staticmethod
    def degraded(reason: str) -> str:
        return f"degraded (reads only): {reason}"

    @staticmethod
    def reloading() -> str:
        return "reloading config"

    @staticmethod
    def stopping() -> str:
        return "stopping: finishing in-flight commands, checkpointing"
