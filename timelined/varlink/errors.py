"""The library's exceptions: each one a `VarlinkError`, a Varlink error name with parameters.

The library knows no application's errors. A server is given an `ErrorMapper` that turns an
application's exception into a (name, parameters) pair, and may rename the library's own errors
with it too; a client is given a `ReplyMapper` that turns every error it would raise (an error
reply, or one of its own below) into the application's exception.

Errors of the library's own, under `LIBRARY_INTERFACE` unless a mapper renames them:

- `ProtocolViolation` (`reason`): bytes that are not a Varlink message (a server's peer sent a
  bad call; a client's peer sent a bad reply, or one over the size limit);
- `LimitReached` (`limit`, `size`, `maximum`): a server's `max_message_bytes` or
  `max_connections` exceeded;
- `ServerStopping`: a call that arrived (or a stream that was running) when the server began
  to stop;
- `InternalFailure` (`exception`): a handler failed unexpectedly (details in the server's log);
- `ConnectionFailed` (`path`, `reason`): a client could not reach the socket, or lost the
  connection before the reply. Never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "LIBRARY_INTERFACE",
    "ConnectionFailed",
    "ErrorMapper",
    "InternalFailure",
    "LimitReached",
    "ProtocolViolation",
    "ReplyMapper",
    "ServerStopping",
    "VarlinkError",
    "VarlinkErrorReply",
    "keep_error",
]

# Not a standard interface: the names this library gives its own errors, for applications that
# do not map them to names of their own.
LIBRARY_INTERFACE = "org.varlink.transport"


class VarlinkError(Exception):
    """A named Varlink error with its parameters (`message`, when present, is its text)."""

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.parameters: dict[str, Any] = dict(parameters or {})
        message = self.parameters.get("message")
        super().__init__(f"{name}: {message}" if message else name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.parameters!r})"


class VarlinkErrorReply(VarlinkError):
    """An error reply: raised by the clients on an error reply, and by handlers that want to
    send a named error their application's mapper does not name (e.g. InvalidParameter)."""


class ProtocolViolation(VarlinkError):
    """The peer sent bytes that are not a Varlink message; the connection cannot go on."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{LIBRARY_INTERFACE}.ProtocolError",
            {"reason": reason, "message": f"protocol error: {reason}"},
        )
        self.reason = reason


class LimitReached(VarlinkError):
    """A server limit (`max_message_bytes`, `max_connections`) was exceeded."""

    def __init__(self, limit: str, size: int, maximum: int) -> None:
        super().__init__(
            f"{LIBRARY_INTERFACE}.LimitExceeded",
            {
                "limit": limit,
                "size": size,
                "maximum": maximum,
                "message": f"{limit} exceeded: {size} > {maximum}",
            },
        )
        self.limit = limit
        self.size = size
        self.maximum = maximum


class ServerStopping(VarlinkError):
    """The server is stopping: the call was not run (or its stream was cut)."""

    def __init__(self) -> None:
        super().__init__(
            f"{LIBRARY_INTERFACE}.ShuttingDown", {"message": "the server is shutting down"}
        )


class InternalFailure(VarlinkError):
    """A handler (or the authorization hook) failed with an exception nobody named."""

    def __init__(self, method: str, exception: str) -> None:
        super().__init__(
            f"{LIBRARY_INTERFACE}.InternalError",
            {
                "message": f"internal error in {method}; the server's log has the details",
                "exception": exception,
            },
        )
        self.method = method
        self.exception = exception


class ConnectionFailed(VarlinkError):
    """A client could not reach the service at `path`, or lost the connection mid-call."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{LIBRARY_INTERFACE}.ConnectionFailed",
            {"path": path, "reason": reason, "message": f"cannot reach {path}: {reason}"},
        )
        self.path = path
        self.reason = reason


# A server's mapper: the (name, parameters) to send for an exception, or None when the
# application does not name it (a VarlinkError is then sent as itself; anything else becomes an
# InternalFailure). It sees the library's own errors too, so that it may rename them. Its second
# argument is the interface of the called method (`CallContext.interface`; for a call to a
# method nobody serves, the interface its name asks for), or None for an error sent outside a
# call (a frame that is not a call, a frame over the size limit, a connection over the limit):
# a Varlink error's name is qualified by the interface that declares it, and an application
# whose interfaces declare the same error may name it after the interface that was called.
ErrorMapper = Callable[[Exception, str | None], tuple[str, Mapping[str, Any]] | None]
# A client's mapper: the exception to raise for an error of the library (an error reply, a
# ConnectionFailed, a ProtocolViolation); `keep_error` raises the library's own.
ReplyMapper = Callable[[VarlinkError], Exception]


def keep_error(error: VarlinkError) -> Exception:
    """The default ReplyMapper: the library's error, as it is."""
    return error
