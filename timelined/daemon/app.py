"""What the method handlers can reach: the running daemon's parts, in one object.

The lifecycle builds it after boot; handlers read `config` fresh on every call because a reload
replaces it. Parts that a feature adds later (the verifier, the watch hub) are Protocols here, so
that `daemon/methods.py` depends on what they promise rather than on their modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from timelined.api.reports import Report
from timelined.config import Config
from timelined.varlink import VarlinkServer
from timelined.writer.engine import Engine


class VerifierLike(Protocol):
    """The background verifier as the daemon uses it (timelined/verifier)."""

    async def verify(self, wait: bool = True) -> Any: ...

    def status(self) -> Any: ...

    def latest(self) -> Any: ...

    async def repair(self) -> Any: ...


@dataclass
class App:
    config: Config
    engine: Engine
    boot: Report
    server: VarlinkServer
    started_at: str
    verifier: VerifierLike | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # features register their parts here
