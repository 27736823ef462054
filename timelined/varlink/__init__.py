"""Varlink protocol layer: framing, interface definitions, server and client transports.

Generic: it knows Varlink and the shared error vocabulary (`timelined.errors`), nothing of
timelines. `timelined.daemon` declares the interfaces and registers their handlers.
"""

from timelined.varlink.client import (
    AsyncConnection,
    AsyncVarlinkClient,
    Connection,
    VarlinkClient,
)
from timelined.varlink.interface import ErrorDef, Interface, InterfaceDefinitionError, Method
from timelined.varlink.protocol import VarlinkErrorReply
from timelined.varlink.server import (
    Authorizer,
    CallContext,
    Final,
    Handler,
    PeerCredentials,
    ServerLimits,
    ServerStats,
    VarlinkServer,
    bind_unix_socket,
    listen_unix,
    listener_from_socket,
)
from timelined.varlink.service import ServiceInfo

__all__ = [
    "AsyncConnection",
    "AsyncVarlinkClient",
    "Authorizer",
    "CallContext",
    "Connection",
    "ErrorDef",
    "Final",
    "Handler",
    "Interface",
    "InterfaceDefinitionError",
    "Method",
    "PeerCredentials",
    "ServerLimits",
    "ServerStats",
    "ServiceInfo",
    "VarlinkClient",
    "VarlinkErrorReply",
    "VarlinkServer",
    "bind_unix_socket",
    "listen_unix",
    "listener_from_socket",
]
