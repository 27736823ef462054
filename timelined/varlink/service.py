"""`org.varlink.service`, the interface every Varlink service provides, declared like any other."""

from __future__ import annotations

import msgspec

from timelined.varlink.interface import ErrorDef, Interface, Method

__all__ = [
    "SERVICE",
    "GetInfoParams",
    "GetInfoReply",
    "GetInterfaceDescriptionParams",
    "GetInterfaceDescriptionReply",
    "ServiceInfo",
]


class ServiceInfo(msgspec.Struct, frozen=True):
    """What GetInfo says about the implementation."""

    vendor: str
    product: str
    version: str
    url: str


class GetInfoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class GetInfoReply(msgspec.Struct, frozen=True):
    vendor: str
    product: str
    version: str
    url: str
    interfaces: list[str]


class GetInterfaceDescriptionParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    interface: str


class GetInterfaceDescriptionReply(msgspec.Struct, frozen=True):
    description: str


class _InterfaceParam(msgspec.Struct, frozen=True):
    interface: str


class _MethodParam(msgspec.Struct, frozen=True):
    method: str


class _ParameterParam(msgspec.Struct, frozen=True):
    parameter: str


SERVICE = Interface(
    name="org.varlink.service",
    doc="The Varlink Service Interface is provided by every varlink service. It\n"
    "describes the service and the interfaces it implements.",
    methods=[
        Method(
            "GetInfo",
            GetInfoParams,
            GetInfoReply,
            doc="Get a list of all the interfaces a service provides and information\n"
            "about the implementation.",
        ),
        Method(
            "GetInterfaceDescription",
            GetInterfaceDescriptionParams,
            GetInterfaceDescriptionReply,
            doc="Get the description of an interface that is implemented by this service.",
        ),
    ],
    errors=[
        ErrorDef("InterfaceNotFound", _InterfaceParam, "The requested interface was not found."),
        ErrorDef("MethodNotFound", _MethodParam, "The requested method was not found"),
        ErrorDef(
            "MethodNotImplemented",
            _MethodParam,
            "The interface defines the requested method, but the service does not\nimplement it.",
        ),
        ErrorDef("InvalidParameter", _ParameterParam, "One of the passed parameters is invalid."),
        # The last two are in the standard (varlink.org/Service) though older copies of it,
        # such as the one in the `varlink` package, lack them.
        ErrorDef("PermissionDenied", None, "Client is denied access"),
        ErrorDef(
            "ExpectedMore",
            None,
            "Method is expected to be called with 'more' set to true, but wasn't",
        ),
    ],
)
