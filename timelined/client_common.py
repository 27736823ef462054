"""What the two clients share: the error classes and their decoding, where the daemon's socket
is, call parameters, watched events.

`timelined.client` re-exports the public names; `AsyncClient` (timelined/client.py) and the
generated `Client` (timelined/client_sync.py) both import from here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from timelined.api import INTERFACES, LogEvent
from timelined.api.exchange import ExportDocument, ExportPart, join_parts
from timelined.auditlog.record import RecordError, check_frame
from timelined.config import find_config_file, load_config
from timelined.errors import (
    DaemonUnavailable,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
    ShuttingDown,
    TimelinedError,
    all_error_classes,
)
from timelined.varlink.errors import (
    ConnectionFailed,
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ServerStopping,
    VarlinkError,
    VarlinkErrorReply,
)

__all__ = [
    "ADMIN",
    "LEGACY_PREFIX",
    "SERVICE",
    "SOCKET_ENV",
    "SYSTEMD_SOCKET",
    "TIMELINE",
    "ExpectedMore",
    "InterfaceNotFound",
    "InvalidParameter",
    "MethodNotFound",
    "MethodNotImplemented",
    "RemoteError",
    "VarlinkServiceError",
    "call_params",
    "check_finite",
    "error_from_reply",
    "export_document",
    "hangs_up",
    "local_error",
    "log_event",
    "socket_path",
    "to_json",
]

TIMELINE = "io.timelined.Timeline."
ADMIN = "io.timelined.Admin."
SERVICE = "org.varlink.service."
SOCKET_ENV = "TIMELINED_SOCKET"
# Deprecated: timelined 0.1 sent its errors as `io.timelined.<Name>`, not qualified by the
# interface that declares them. This release's client still decodes those names (to the same
# classes); 0.3.0 drops them (docs/interfaces.md, "Error names").
LEGACY_PREFIX = "io.timelined."


# --- errors ------------------------------------------------------------------------------------


class VarlinkServiceError(TimelinedError):
    """An error of the standard interface `org.varlink.service`: its parameters are exactly the
    standard's (the constructor's arguments), and the message is composed here."""

    name = "VarlinkServiceError"
    home_interface = SERVICE.rstrip(".")


class InvalidParameter(VarlinkServiceError):
    """A parameter of the wrong type, missing, or unknown; `parameter` names it (what was wrong
    with it is in the daemon's log, at debug level)."""

    name = "InvalidParameter"

    def __init__(self, parameter: str) -> None:
        super().__init__(f"invalid parameter {parameter!r}", parameter=parameter)
        self.parameter = parameter


class MethodNotFound(VarlinkServiceError):
    name = "MethodNotFound"

    def __init__(self, method: str) -> None:
        super().__init__(f"no method {method!r}", method=method)
        self.method = method


class MethodNotImplemented(VarlinkServiceError):
    name = "MethodNotImplemented"

    def __init__(self, method: str) -> None:
        super().__init__(f"method {method!r} is declared but not implemented", method=method)
        self.method = method


class InterfaceNotFound(VarlinkServiceError):
    name = "InterfaceNotFound"

    def __init__(self, interface: str) -> None:
        super().__init__(f"no interface {interface!r}", interface=interface)
        self.interface = interface


class ExpectedMore(VarlinkServiceError):
    """A method that streams its answer (ExportConversation) was called without `more`."""

    name = "ExpectedMore"

    def __init__(self) -> None:
        super().__init__("this method streams its answer: call it with more (stream())")


class RemoteError(TimelinedError):
    """A named error this library has no class for: `error` is its full Varlink name."""

    name = "RemoteError"

    def __init__(self, error: str, parameters: Mapping[str, Any]) -> None:
        params = {k: v for k, v in parameters.items() if k != "message"}
        super().__init__(str(parameters.get("message") or error), **params)
        self.error = error
        self.received_as = error


_RESERVED = frozenset({"message", "params", "error"})
_classes: dict[str, type[TimelinedError]] = {}
# After these the server hangs up: the pooled connection must not be reused (the next call on
# it could meet the hang-up instead of an answer).
_HANGS_UP = (PermissionDenied, ProtocolError, LimitExceeded, ShuttingDown)


def _error_classes() -> dict[str, type[TimelinedError]]:
    """Every error name the daemon sends (each interface's own, `io.timelined.Timeline.X`, and
    the standard's) and, until 0.3.0, the unqualified names of 0.1 → its class."""
    if not _classes:
        named = [c for c in all_error_classes() if c not in (RemoteError, VarlinkServiceError)]
        by_name = {c.name: c for c in named if not issubclass(c, VarlinkServiceError)}
        for interface in INTERFACES:
            for declared in interface.errors:
                _classes[f"{interface.name}.{declared.name}"] = by_name[declared.name]
        for cls in named:
            if issubclass(cls, VarlinkServiceError):
                _classes[SERVICE + cls.name] = cls
            else:
                _classes.setdefault(LEGACY_PREFIX + cls.name, cls)
    return _classes


def hangs_up(error: str) -> bool:
    """Whether the server hangs up after the error reply named `error`."""
    return issubclass(_error_classes().get(error, RemoteError), _HANGS_UP)


def local_error(error: VarlinkError) -> Exception:
    """The Varlink library's own failures as timelined's; error replies stay as they are
    (the clients catch them and `error_from_reply` names them).

    Every other `VarlinkError` becomes a TimelinedError, so that nothing of the library reaches
    a caller of the client: the library's client raises only the first two today, the rest are
    the server's (a server without the daemon's mapper sends them as `org.varlink.transport.*`,
    and those arrive as replies), but one raised some day must not leak past this boundary.
    """
    if isinstance(error, VarlinkErrorReply):
        return error
    if isinstance(error, ConnectionFailed):
        return DaemonUnavailable(error.path, error.reason)
    if isinstance(error, ProtocolViolation):
        return ProtocolError(error.reason)
    if isinstance(error, LimitReached):
        return LimitExceeded(error.limit, error.size, error.maximum)
    if isinstance(error, ServerStopping):
        return ShuttingDown()
    if isinstance(error, InternalFailure):
        return InternalError(f"{error.exception} in {error.method}")
    return RemoteError(error.name, error.parameters)


def error_from_reply(reply: VarlinkErrorReply) -> TimelinedError:
    """The named exception for a Varlink error reply, its parameters restored; its
    `varlink_name` is the name it arrived under."""
    cls = _error_classes().get(reply.name)
    params = reply.parameters
    if cls is None:
        return RemoteError(reply.name, params)
    exc = _standard_error(cls, params) or _as_sent(cls, params)
    exc.received_as = reply.name
    return exc


def _standard_error(cls: type[TimelinedError], params: Mapping[str, Any]) -> TimelinedError | None:
    """An org.varlink.service error from exactly the standard's parameters; None otherwise."""
    if not issubclass(cls, VarlinkServiceError):
        return None
    try:
        return cls(**params)
    except TypeError:  # not the standard's parameters (an older daemon added `message`)
        return None


def _as_sent(cls: type[TimelinedError], params: Mapping[str, Any]) -> TimelinedError:
    # The classes' constructors take what the daemon knew; the reply carries what it said. Set
    # the parameters as they arrived (the message included) rather than guessing arguments.
    exc = cls.__new__(cls)
    message = params.get("message")
    if not isinstance(message, str) or not message:
        message = _fallback_message(cls, params)
    elif cls is InvalidParameter and "parameter" in params:
        message = f"invalid parameter {params['parameter']!r}: {message}"
    TimelinedError.__init__(exc, message, **{k: v for k, v in params.items() if k != "message"})
    for key, value in params.items():
        if key not in _RESERVED and key.isidentifier() and not hasattr(cls, key):
            setattr(exc, key, value)
    return exc


def _fallback_message(cls: type[TimelinedError], params: Mapping[str, Any]) -> str:
    details = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"{cls.name}: {details}" if details else cls.name


# --- where the daemon is -----------------------------------------------------------------------


# Where the packaged systemd units put the socket (RuntimeDirectory=timelined).
SYSTEMD_SOCKET = Path("/run/timelined/timelined.sock")


def socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The daemon's socket: `explicit`, else $TIMELINED_SOCKET, else the socket_path of the
    config.toml found as the daemon finds it ($TIMELINED_CONFIG, …, ./config.toml); with no
    config file, the systemd service's socket if it exists, else the default (./var)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    if find_config_file() is None and _service_socket_there():
        return SYSTEMD_SOCKET
    return load_config().socket_path


def _service_socket_there() -> bool:
    try:
        return SYSTEMD_SOCKET.is_socket()
    except PermissionError:  # /run/timelined is 0750: it is there, this user may not use it
        return True  # connecting then says so (timelinectl exits 77)
    except OSError:
        return False


def call_params(**kwargs: Any) -> dict[str, Any]:
    """Call parameters without the ones left out (None), as optional Varlink fields are.

    A NaN or an infinity is refused here: JSON cannot carry one, and an encoder would silently
    send `null`, which the daemon takes as "left out".
    """
    check_finite(kwargs)
    return {k: v for k, v in kwargs.items() if v is not None}


def check_finite(params: Mapping[str, Any] | msgspec.Struct) -> None:
    for name, value in _members(params):
        _finite(name, value)


def _members(value: Mapping[str, Any] | msgspec.Struct) -> Iterable[tuple[str, Any]]:
    if isinstance(value, msgspec.Struct):
        return ((name, getattr(value, name)) for name in value.__struct_fields__)
    return value.items()


def _finite(where: str, value: Any) -> None:
    """Down into metadata, sub-blocks and Structs too: a NaN there would become `null` as well."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(where, f"must be a finite number, not {value}")
    elif isinstance(value, Mapping | msgspec.Struct):
        for key, item in _members(value):
            _finite(f"{where}.{key}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _finite(f"{where}[{index}]", item)


_LOG_EVENT = msgspec.json.Decoder(LogEvent)


def log_event(raw: msgspec.Raw | bytes) -> LogEvent:
    """One event of a Watch reply (a log line), its hash checked by the log-format rule."""
    content = bytes(raw)
    try:
        check_frame(content)
    except RecordError as exc:
        raise ProtocolError(f"a watched event is not intact: {exc.kind}") from None
    return _LOG_EVENT.decode(content)


def export_document(document: ExportDocument | Iterable[ExportPart]) -> ExportDocument:
    return document if isinstance(document, ExportDocument) else join_parts(list(document))


def to_json(value: Any) -> bytes:
    """A reply (or any Struct) as JSON bytes, as it travels on the wire."""
    return msgspec.json.encode(value)
