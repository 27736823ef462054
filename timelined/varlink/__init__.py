"""Varlink protocol layer: framing, interface definitions, server and client transports.

A library of its own: it imports nothing of timelined but itself (a test checks). What an
application must tell it is injected: the server's limits (`ServerLimits`), an error mapper that
names the application's exceptions on the wire (`ErrorMapper`), and the clients' mapper that turns
errors back into the application's exceptions (`ReplyMapper`). `timelined.daemon` declares the
interfaces, registers their handlers and injects those (`daemon/varlink_setup.py`).
"""

from timelined.varlink.admission import Admission
from timelined.varlink.client import (
    AsyncConnection,
    AsyncVarlinkClient,
    Connection,
    ConnectionCore,
    VarlinkClient,
)
from timelined.varlink.errors import (
    ConnectionFailed,
    ErrorMapper,
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ReplyMapper,
    ServerStopping,
    VarlinkError,
    VarlinkErrorReply,
)
from timelined.varlink.interface import ErrorDef, Interface, InterfaceDefinitionError, Method
from timelined.varlink.server import (
    Admitter,
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
    "Admission",
    "Admitter",
    "AsyncConnection",
    "AsyncVarlinkClient",
    "Authorizer",
    "CallContext",
    "Connection",
    "ConnectionCore",
    "ConnectionFailed",
    "ErrorDef",
    "ErrorMapper",
    "Final",
    "Handler",
    "Interface",
    "InterfaceDefinitionError",
    "InternalFailure",
    "LimitReached",
    "Method",
    "PeerCredentials",
    "ProtocolViolation",
    "ReplyMapper",
    "ServerLimits",
    "ServerStats",
    "ServerStopping",
    "ServiceInfo",
    "VarlinkClient",
    "VarlinkError",
    "VarlinkErrorReply",
    "VarlinkServer",
    "bind_unix_socket",
    "listen_unix",
    "listener_from_socket",
]
