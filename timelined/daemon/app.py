"""What the method handlers can reach: the running daemon's parts, in one object.

The lifecycle builds it after boot; handlers read `config` fresh on every call because a reload
replaces it. The parts that arrive once serving (the verifier, the reloader) are Protocols here,
so that `daemon/methods.py` depends on what they promise rather than on their modules, and are
None until then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from timelined.api import ReloadReply
from timelined.api.reports import Report
from timelined.auditlog.source import LogSource
from timelined.config import Config
from timelined.daemon.notify import StatusText
from timelined.daemon.watch import WatchHub
from timelined.treestore.service import Transparency
from timelined.varlink.server import VarlinkServer
from timelined.writer.engine import Engine


class VerifierLike(Protocol):
    """The background verifier as the daemon uses it (timelined/verifier)."""

    async def verify(self, wait: bool = True) -> Any: ...

    def status(self) -> Any: ...

    def latest(self) -> Any: ...

    async def repair(self) -> Any: ...


class ReloaderLike(Protocol):
    """The config reloader as Admin.Reload uses it (daemon/reload.py)."""

    async def reload(self) -> ReloadReply: ...


@dataclass
class App:
    config: Config
    engine: Engine
    boot: Report
    server: VarlinkServer
    started_at: str
    # Where every read of committed log lines goes (ReadLog, Watch, exports, the Merkle tree):
    # `FileLogSource(config.log_dir)`, or the PostgreSQL log table.
    log: LogSource
    verifier: VerifierLike | None = None
    reloader: ReloaderLike | None = None
    # The Merkle tree and checkpoints (issue 19); set before serving, subscribed to the engine.
    transparency: Transparency | None = None
    # GetMetrics' uptime: a monotonic clock, unmoved by a change of the wall clock.
    started_monotonic: float = field(default_factory=time.monotonic)
    # Made with the App, so subscribed to the engine before the first commit it serves.
    watch: WatchHub = field(init=False)

    def __post_init__(self) -> None:
        # Watchers' queues count in the same daemon-wide budget as the server's buffers.
        self.watch = WatchHub(self.engine, self.log, shared=self.server.buffers)

    def status_text(self) -> str:
        """The STATUS= line of a serving daemon: degraded while writes are refused."""
        if self.engine.read_only is not None:
            return StatusText.degraded(self.engine.read_only.message)
        return StatusText.serving(self.engine.last_seq, str(self.config.socket_path))
