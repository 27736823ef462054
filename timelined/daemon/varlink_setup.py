"""What the daemon injects into the Varlink library (`timelined.varlink`): its error names, its
limits, and what GetInfo says of it.

The library knows no timelined error. `map_error` is the server's error mapper: a
`TimelinedError` is sent with its parameters under its interface-qualified name, as the Varlink
spec requires, and the library's own errors are renamed to the daemon's (ProtocolError,
LimitExceeded, ShuttingDown, InternalError). A `TimelinedError` whose name no interface declares
(a `LocalError`: a record that does not parse, a proof asked out of range, ...) is not named: the
server answers it as any unexpected exception, InternalError, and logs its traceback. Which
interface qualifies the name:

- the interface of the called method when it declares the error (`timelined.api.errors`):
  `io.timelined.Timeline.ContextNotFound`; an error both interfaces declare (PermissionDenied,
  LimitExceeded, StorageError, …) is `io.timelined.Admin.PermissionDenied` on an Admin call;
- otherwise, and for an error sent outside a call (a frame that is not a call or is over
  `max_message_bytes`, a connection over `max_connections`, a frame that arrives while the
  daemon stops), its `home_interface` (`timelined.errors`): `io.timelined.Timeline`, unless only
  `io.timelined.Admin` declares it. A call to `org.varlink.service` or to an interface nobody
  serves that is refused (PermissionDenied) is named so too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from timelined import __version__
from timelined.api import INTERFACES
from timelined.config import LimitsConfig
from timelined.errors import (
    InternalError,
    LimitExceeded,
    ProtocolError,
    ShuttingDown,
    TimelinedError,
)
from timelined.varlink.errors import (
    ErrorMapper,
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ServerStopping,
)
from timelined.varlink.interface import Interface
from timelined.varlink.server import ServerLimits
from timelined.varlink.service import ServiceInfo

__all__ = ["error_mapper", "map_error", "project_url", "server_limits", "service_info"]


def error_mapper(interfaces: Iterable[Interface]) -> ErrorMapper:
    """The error mapper for a server of `interfaces`: each error named by the called interface
    when that interface declares it, else by the error's home interface."""
    declared = {i.name: frozenset(e.name for e in i.errors) for i in interfaces}
    # Only a name some interface declares is sent (timelined's own, `timelined.api.errors`, or
    # one of `interfaces`: a server of other interfaces still sends timelined's errors under
    # their home interface): any other TimelinedError (a LocalError escaping a handler, a class
    # added without its declaration) is a bug, answered as an exception nobody named is
    # (InternalError; the server logs its traceback).
    sendable = frozenset(e.name for i in INTERFACES for e in i.errors).union(*declared.values())

    def qualified(cls: type[TimelinedError], interface: str | None) -> str:
        if interface is not None and cls.name in declared.get(interface, ()):
            return f"{interface}.{cls.name}"
        return f"{cls.home_interface}.{cls.name}"

    def map_error(
        exc: Exception, interface: str | None = None
    ) -> tuple[str, Mapping[str, Any]] | None:
        """The Varlink error (name, parameters) for `exc`; None for one the daemon does not
        name. `interface`: the called method's, None outside a call."""
        err: TimelinedError
        if isinstance(exc, TimelinedError):
            if exc.name not in sendable:
                return None
            err = exc
        elif isinstance(exc, ProtocolViolation):
            err = ProtocolError(exc.reason)
        elif isinstance(exc, LimitReached):
            err = LimitExceeded(exc.limit, exc.size, exc.maximum)
        elif isinstance(exc, ServerStopping):
            err = ShuttingDown()
        elif isinstance(exc, InternalFailure):
            # Not an InternalError the daemon raised: the server's own form, which names the
            # exception's type rather than a detail.
            return qualified(InternalError, interface), {
                "message": f"internal error in {exc.method}; the daemon's log has the details",
                "exception": exc.exception,
            }
        else:
            return None
        return qualified(type(err), interface), err.params

    return map_error


map_error = error_mapper(INTERFACES)
"""The daemon's mapper, for io.timelined.Timeline and io.timelined.Admin."""


def project_url() -> str:
    """The project's own URL, from the package metadata (pyproject's `[project.urls]`): its
    Homepage, else its first URL; "" while the project has none (GetInfo's `url` is a string
    in the standard, and an empty one says "none" without pointing anywhere wrong)."""
    # Imported here: ~30 ms of CPU (email, zipfile, csv), which the daemon pays at the first
    # GetInfo, never before READY (lifecycle hands `service_info` to the server uncalled).
    from importlib import metadata

    try:
        entries = metadata.metadata("timelined").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return ""
    urls = dict(_label_and_url(entry) for entry in entries)
    return urls.get("homepage") or next(iter(urls.values()), "")


def _label_and_url(entry: str) -> tuple[str, str]:
    label, _, url = entry.partition(",")
    return label.strip().lower(), url.strip()


def service_info() -> ServiceInfo:
    """What org.varlink.service.GetInfo says of the daemon."""
    return ServiceInfo(
        vendor="timelined", product="timelined", version=__version__, url=project_url()
    )


def server_limits(limits: LimitsConfig) -> ServerLimits:
    """The `[limits]` the protocol layer enforces, from the daemon's config."""
    return ServerLimits(
        max_message_bytes=limits.max_message_bytes,
        max_connections=limits.max_connections,
        idle_timeout_s=float(limits.idle_timeout_s),
        max_buffered_bytes=limits.max_buffered_bytes,
        max_buffered_bytes_per_uid=limits.effective_buffered_per_uid(),
        max_connections_per_uid=limits.effective_per_uid(),
        reserved_connections=limits.effective_reserved(),
        idle_timeout_new_s=float(limits.idle_timeout_new_s),
    )
