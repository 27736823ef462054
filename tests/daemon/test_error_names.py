"""Varlink conformance of the daemon's errors (issue 18, finding 7), on a real daemon.

- Every error is named by an interface that declares it, in the interface description the
  daemon serves: on a call, by the called method's interface (`io.timelined.Timeline.X`,
  `io.timelined.Admin.X`); outside a call, by its home interface.
- The standard `org.varlink.service` errors carry exactly the standard's parameters.
- GetInfo's `url` is the project's own, not varlink.org's.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import varlink

from tests.daemon.harness import DaemonProcess, inprocess_daemon, short_tempdir
from tests.varlink.test_independent_client import declared_error
from timelined.api import INTERFACES
from timelined.api.errors import ADMIN_ERRORS, TIMELINE_ERRORS, ErrorClass
from timelined.auditlog.record import RecordError
from timelined.client import AsyncClient, Client, ExpectedMore, InvalidParameter
from timelined.daemon.varlink_setup import error_mapper, map_error, project_url
from timelined.errors import (
    ADMIN_INTERFACE,
    TIMELINE_INTERFACE,
    ContextNotFound,
    InternalError,
    InvalidArgument,
    LocalError,
    PermissionDenied,
    TimelinedError,
)
from timelined.state import lookup
from timelined.varlink.client import VarlinkClient
from timelined.varlink.errors import (
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ServerStopping,
    VarlinkError,
    VarlinkErrorReply,
)

DECLARED_BY: dict[str, tuple[ErrorClass, ...]] = {
    TIMELINE_INTERFACE: TIMELINE_ERRORS,
    ADMIN_INTERFACE: ADMIN_ERRORS,
}
# What the server sends of its own on any call (the daemon's mapper renames them).
SERVER_ERRORS: list[VarlinkError] = [
    ProtocolViolation("bad"),
    LimitReached("max_message_bytes", 2, 1),
    ServerStopping(),
    InternalFailure("x.Y.Z", "KeyError"),
]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """A daemon of this module's own: the tests put a report file in its state directory."""
    with short_tempdir() as base:
        proc = DaemonProcess(base).start()
        try:
            yield proc
        finally:
            code = proc.stop()
        assert code == 0, f"the daemon exited {code}:\n{proc.log()}"


@pytest.fixture(scope="module")
def served(daemon: DaemonProcess) -> dict[str, frozenset[str]]:
    """The errors each interface declares, from the description the daemon serves."""
    out: dict[str, frozenset[str]] = {}
    with Client(daemon.socket_path, timeout=30) as tl:
        for interface in INTERFACES:
            parsed = varlink.Interface(tl.get_interface_description(interface.name))
            out[interface.name] = frozenset(
                name
                for name, member in parsed.members.items()
                if isinstance(member, varlink.scanner._Error)
            )
    return out


def _instance(cls: ErrorClass) -> TimelinedError:
    """An instance of `cls` without knowing its constructor (the mapper reads its class and
    parameters only)."""
    exc = cls.__new__(cls)
    TimelinedError.__init__(exc, "a test")
    return exc


@pytest.mark.parametrize("interface", [TIMELINE_INTERFACE, ADMIN_INTERFACE])
def test_every_error_a_call_can_send_is_declared_by_the_called_interface(
    served: dict[str, frozenset[str]], interface: str
) -> None:
    """Derived from the declarations (`timelined.api.errors`), not a hand list: each error an
    interface's methods can send, and each the server sends of its own on any call, goes out
    as `<interface>.<Name>`, and the description served for that interface declares it."""
    sent: list[Exception] = [_instance(cls) for cls in DECLARED_BY[interface]]
    for exc in [*sent, *SERVER_ERRORS]:
        named = map_error(exc, interface)
        assert named is not None, exc
        owner, _, name = named[0].rpartition(".")
        assert owner == interface, (exc, named[0])
        assert name in served[interface], f"{interface} does not declare {name}"


def test_outside_a_call_every_error_is_named_by_a_home_that_declares_it(
    served: dict[str, frozenset[str]],
) -> None:
    for cls in {*TIMELINE_ERRORS, *ADMIN_ERRORS}:
        named = map_error(_instance(cls), None)
        assert named is not None
        assert named[0] == f"{cls.home_interface}.{cls.name}"
        assert cls.name in served[cls.home_interface], cls
        # The name a tool prints for one it met itself (timelinectl, `timelined check-config`).
        assert _instance(cls).varlink_name == named[0]
    for exc in SERVER_ERRORS:
        named = map_error(exc, None)
        assert named is not None and named[0].startswith(TIMELINE_INTERFACE + "."), named


def test_the_wire_names_errors_by_the_called_interface(daemon: DaemonProcess) -> None:
    """As an independent client (the `varlink` package) sees them: each error name starts with
    the interface it called, and that interface's served description declares it."""
    (daemon.state_dir / "reports" / "verify-errnames.json").write_text("{}")
    with varlink.Client(address=f"unix:{daemon.socket_path}") as vc:
        with vc.open(TIMELINE_INTERFACE) as tl, pytest.raises(varlink.VarlinkError) as missing:
            tl.GetContext(id="ctx_nope")
        with vc.open(ADMIN_INTERFACE) as admin, pytest.raises(varlink.VarlinkError) as wrong:
            admin.GetRecoveryReport(id="verify-errnames")  # a verification report: refused
        got = {
            "missing": missing.value.error(),
            "wrong": wrong.value.error(),
        }
        declared = {key: declared_error(vc, name) for key, name in got.items()}
    assert got == {
        "missing": "io.timelined.Timeline.ContextNotFound",
        # InvalidArgument is declared by both: named by the interface of the called method.
        "wrong": "io.timelined.Admin.InvalidArgument",
    }
    assert declared == {"missing": True, "wrong": True}
    with Client(daemon.socket_path, timeout=30) as c:
        with pytest.raises(ContextNotFound) as typed:
            c.get_context("ctx_nope")
        assert typed.value.varlink_name == "io.timelined.Timeline.ContextNotFound"
        with pytest.raises(InvalidArgument) as typed_admin:
            c.get_recovery_report("verify-errnames")
        assert typed_admin.value.varlink_name == "io.timelined.Admin.InvalidArgument"


def _raw_error(c: Client, method: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The error reply's name and parameters exactly as sent (through the library's client)."""
    with VarlinkClient(c.socket_path) as raw, pytest.raises(VarlinkErrorReply) as err:
        raw.call(method, params)
    return err.value.name, err.value.parameters


def test_standard_errors_carry_exactly_the_standard_parameters(daemon: DaemonProcess) -> None:
    with Client(daemon.socket_path, timeout=30) as c:
        conv = c.create_conversation("standard errors")
        expected_more = _raw_error(c, TIMELINE_INTERFACE + ".ExportConversation", {"id": conv.id})
        invalid = _raw_error(c, TIMELINE_INTERFACE + ".GetContext", {"id": 7})
        assert expected_more == ("org.varlink.service.ExpectedMore", {})
        assert invalid == ("org.varlink.service.InvalidParameter", {"parameter": "id"})
        # The client composes its own words for them.
        with pytest.raises(ExpectedMore, match="call it with more"):
            c.call(TIMELINE_INTERFACE + ".ExportConversation", {"id": conv.id})
        with pytest.raises(InvalidParameter, match="invalid parameter 'id'"):
            c.call(TIMELINE_INTERFACE + ".GetContext", {"id": 7})


def test_getinfo_url_is_the_projects_own(daemon: DaemonProcess) -> None:
    with Client(daemon.socket_path, timeout=30) as c:
        info = c.get_info()
    assert "varlink.org" not in info.url
    assert info.url == project_url()  # pyproject's [project.urls], "" while it has none


class _Undeclared(TimelinedError):
    """A named error some module added without declaring it in an interface."""

    name = "Undeclared"


def _local_errors() -> list[type[LocalError]]:
    """Every LocalError class the package defines (their modules imported here)."""
    for module in _LOCAL_ERROR_MODULES:
        importlib.import_module(module)
    found: list[type[LocalError]] = []
    stack: list[type[LocalError]] = [LocalError]
    while stack:
        for sub in stack.pop().__subclasses__():
            found.append(sub)
            stack.append(sub)
    return found


_LOCAL_ERROR_MODULES = (
    "timelined.auditlog.record",
    "timelined.conninfo",
    "timelined.ctl.blocks",
    "timelined.ctl.streams",
    "timelined.daemon.activation",
    "timelined.pgstore.schema",
    "timelined.pgstore.sql",
    "timelined.state.schema",
    "timelined.stdout",
    "timelined.transparency.merkle",
    "timelined.transparency.note",
    "timelined.verifier.state",
)


@pytest.mark.parametrize(
    "cls", [LocalError, *_local_errors(), _Undeclared], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("interface", [TIMELINE_INTERFACE, ADMIN_INTERFACE, None])
def test_a_timelined_error_no_interface_declares_is_not_named(
    cls: type[TimelinedError], interface: str | None
) -> None:
    """The server then answers it as any exception nobody named: InternalError."""
    assert map_error(_instance(cls), interface) is None


@pytest.mark.parametrize(
    "raised",
    [RecordError("framing", "a line of a test"), _Undeclared("a test"), RuntimeError("a test")],
    ids=lambda e: type(e).__name__,
)
async def test_an_undeclared_error_escaping_a_handler_is_an_internal_error_as_before(
    raised: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a real daemon: a handler that raises a TimelinedError no interface declares answers
    exactly what an unnamed exception (RuntimeError) answers, and its traceback is logged."""

    def broken(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(lookup, "context_or_raise", broken)
    with short_tempdir() as base:
        async with inprocess_daemon(base) as run:
            async with AsyncClient(run.socket_path) as c:
                with pytest.raises(InternalError) as got:
                    await c.get_context("ctx_any")
            with VarlinkClient(run.socket_path) as raw, pytest.raises(VarlinkErrorReply) as sent:
                await anyio.to_thread.run_sync(
                    raw.call, TIMELINE_INTERFACE + ".GetContext", {"id": "x"}
                )
    method = TIMELINE_INTERFACE + ".GetContext"
    assert sent.value.name == TIMELINE_INTERFACE + ".InternalError"
    assert sent.value.parameters == {
        "message": f"internal error in {method}; the daemon's log has the details",
        "exception": type(raised).__name__,
    }
    assert got.value.varlink_name == TIMELINE_INTERFACE + ".InternalError"
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert [r.exc_info[1] for r in logged if r.exc_info] == [raised, raised]


def test_a_server_of_other_interfaces_names_timelined_s_errors_and_no_others() -> None:
    """The mapper of a server that serves none of timelined's interfaces (tests/varlink/demo.py)
    still sends timelined's declared errors, under their home interface, and no other."""
    other = error_mapper([])
    named = other(_instance(PermissionDenied), "com.example.Test")
    assert named is not None and named[0] == f"{TIMELINE_INTERFACE}.PermissionDenied"
    assert other(_instance(_Undeclared), "com.example.Test") is None
    assert other(_instance(RecordError), None) is None
