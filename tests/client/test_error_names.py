"""The client's name → class table: the interface-qualified names, the standard errors with
exactly their parameters, and (until 0.3.0) the unqualified names timelined 0.1 sent."""

from __future__ import annotations

import pytest

from timelined.api.errors import ADMIN_ERRORS, TIMELINE_ERRORS
from timelined.client import (
    ExpectedMore,
    InterfaceNotFound,
    InvalidParameter,
    MethodNotFound,
    RemoteError,
    error_from_reply,
)
from timelined.client_common import LEGACY_PREFIX, hangs_up
from timelined.errors import (
    ADMIN_INTERFACE,
    TIMELINE_INTERFACE,
    ContextNotFound,
    DaemonUnavailable,
    InvalidArgument,
    PermissionDenied,
    StorageError,
)
from timelined.varlink.errors import VarlinkErrorReply

DECLARED = [(TIMELINE_INTERFACE, cls) for cls in TIMELINE_ERRORS] + [
    (ADMIN_INTERFACE, cls) for cls in ADMIN_ERRORS
]


@pytest.mark.parametrize(("interface", "cls"), DECLARED, ids=lambda x: getattr(x, "name", x))
def test_each_declared_name_decodes_to_its_class(interface: str, cls: type) -> None:
    name = f"{interface}.{cls.name}"
    exc = error_from_reply(VarlinkErrorReply(name, {"message": "m"}))
    assert type(exc) is cls
    assert exc.varlink_name == name  # shown as it was sent (timelinectl --json)


@pytest.mark.parametrize(("interface", "cls"), DECLARED, ids=lambda x: getattr(x, "name", x))
def test_the_old_unqualified_name_still_decodes_to_the_same_class(
    interface: str, cls: type
) -> None:
    old = error_from_reply(VarlinkErrorReply(LEGACY_PREFIX + cls.name, {"message": "m"}))
    new = error_from_reply(VarlinkErrorReply(f"{interface}.{cls.name}", {"message": "m"}))
    assert type(old) is type(new) is cls
    assert old.varlink_name == LEGACY_PREFIX + cls.name


def test_a_decoded_error_keeps_its_parameters() -> None:
    params = {"id": "ctx_1", "message": "no context with id 'ctx_1'"}
    exc = error_from_reply(VarlinkErrorReply("io.timelined.Timeline.ContextNotFound", params))
    assert isinstance(exc, ContextNotFound)
    assert (exc.message, exc.params) == (params["message"], params)
    assert exc.id == "ctx_1"  # each parameter as an attribute
    admin = error_from_reply(
        VarlinkErrorReply("io.timelined.Admin.StorageError", {"path": "p", "errno": 5})
    )
    assert isinstance(admin, StorageError) and admin.params["errno"] == 5


def test_an_undeclared_name_is_a_remote_error_as_sent() -> None:
    """A name no interface declares (ContextNotFound is not Admin's) is not guessed at."""
    exc = error_from_reply(VarlinkErrorReply("io.timelined.Admin.ContextNotFound", {"id": "c"}))
    assert isinstance(exc, RemoteError)
    assert exc.varlink_name == "io.timelined.Admin.ContextNotFound"


def test_the_standard_errors_from_exactly_their_parameters() -> None:
    bad = error_from_reply(
        VarlinkErrorReply("org.varlink.service.InvalidParameter", {"parameter": "limit"})
    )
    assert isinstance(bad, InvalidParameter)
    assert (bad.parameter, bad.message) == ("limit", "invalid parameter 'limit'")
    more = error_from_reply(VarlinkErrorReply("org.varlink.service.ExpectedMore", {}))
    assert isinstance(more, ExpectedMore) and "call it with more" in more.message
    assert more.varlink_name == "org.varlink.service.ExpectedMore"
    nf = error_from_reply(
        VarlinkErrorReply("org.varlink.service.MethodNotFound", {"method": "a.B"})
    )
    assert isinstance(nf, MethodNotFound) and nf.method == "a.B"
    gone = error_from_reply(
        VarlinkErrorReply("org.varlink.service.InterfaceNotFound", {"interface": "a.b"})
    )
    assert isinstance(gone, InterfaceNotFound) and gone.interface == "a.b"
    # As timelined 0.1 sent them, with a `message` the standard does not declare.
    old = error_from_reply(
        VarlinkErrorReply(
            "org.varlink.service.InvalidParameter", {"parameter": "limit", "message": "too big"}
        )
    )
    assert isinstance(old, InvalidParameter)
    assert old.message == "invalid parameter 'limit': too big"


def test_the_pool_drops_its_connections_after_errors_that_hang_up() -> None:
    for name in ("PermissionDenied", "ProtocolError", "LimitExceeded", "ShuttingDown"):
        for prefix in (f"{TIMELINE_INTERFACE}.", f"{ADMIN_INTERFACE}.", LEGACY_PREFIX):
            assert hangs_up(prefix + name), prefix + name
    for name in ("io.timelined.Timeline.ContextNotFound", "org.varlink.service.ExpectedMore"):
        assert not hangs_up(name)
    assert not hangs_up("com.example.Unknown")


def test_an_error_met_locally_is_named_by_its_home_interface() -> None:
    assert InvalidArgument("x", "y").varlink_name == "io.timelined.Timeline.InvalidArgument"
    assert DaemonUnavailable("/s", "gone").varlink_name == "io.timelined.Admin.DaemonUnavailable"
    assert PermissionDenied(1, 1, "m", "r").varlink_name == "io.timelined.Timeline.PermissionDenied"
    assert InvalidParameter("p").varlink_name == "org.varlink.service.InvalidParameter"
