"""What the daemon injects into the Varlink library (`timelined.varlink`): its error names and
its limits.

The library knows no timelined error. `map_error` is the server's error mapper: a
`TimelinedError` is sent as `io.timelined.<name>` with its parameters, and the library's own
errors are renamed to the daemon's (ProtocolError, LimitExceeded, ShuttingDown, InternalError),
so the wire reads the same as it did before the library was split off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timelined.config import LimitsConfig
from timelined.errors import LimitExceeded, ProtocolError, ShuttingDown, TimelinedError
from timelined.varlink import ServerLimits
from timelined.varlink.errors import (
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ServerStopping,
)

__all__ = ["INTERNAL_ERROR", "map_error", "server_limits"]

# Not a TimelinedError subclass on purpose: the daemon never raises it, only sends it.
INTERNAL_ERROR = "io.timelined.InternalError"


def map_error(exc: Exception) -> tuple[str, Mapping[str, Any]] | None:
    """The Varlink error (name, parameters) for `exc`; None for one the daemon does not name."""
    err: TimelinedError
    if isinstance(exc, TimelinedError):
        err = exc
    elif isinstance(exc, ProtocolViolation):
        err = ProtocolError(exc.reason)
    elif isinstance(exc, LimitReached):
        err = LimitExceeded(exc.limit, exc.size, exc.maximum)
    elif isinstance(exc, ServerStopping):
        err = ShuttingDown()
    elif isinstance(exc, InternalFailure):
        return INTERNAL_ERROR, {
            "message": f"internal error in {exc.method}; the daemon's log has the details",
            "exception": exc.exception,
        }
    else:
        return None
    return err.varlink_name, err.params


def server_limits(limits: LimitsConfig) -> ServerLimits:
    """The `[limits]` the protocol layer enforces, from the daemon's config."""
    return ServerLimits(
        max_message_bytes=limits.max_message_bytes,
        max_connections=limits.max_connections,
        idle_timeout_s=float(limits.idle_timeout_s),
        max_buffered_bytes=limits.max_buffered_bytes,
        max_connections_per_uid=limits.effective_per_uid(),
        reserved_connections=limits.effective_reserved(),
        idle_timeout_new_s=float(limits.idle_timeout_new_s),
    )
