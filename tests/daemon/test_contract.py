"""The public contract, checked without a daemon: interface files, errors, auth, client, ctl."""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import varlink

import timelined.recovery.boot  # noqa: F401 — defines BootFailed
from timelined import api
from timelined import client as client_mod
from timelined.daemon.auth import READ_ONLY_METHODS, WRITE_METHODS
from timelined.errors import TimelinedError, all_error_classes
from timelined.varlink.gen import assert_interface_files_current

CTL_DIR = Path(client_mod.__file__).parent / "ctl"

# The contract of issue 3 / issue 7: method → parameter names clients rely on.
CONTRACT: dict[str, set[str]] = {
    "Timeline.CreateConversation": {"name", "metadata"},
    "Timeline.ListConversations": {"include_archived", "limit", "after"},
    "Timeline.GetConversation": {"id"},
    "Timeline.UpdateConversation": {"id", "name", "metadata"},
    "Timeline.ArchiveConversation": {"id", "reason"},
    "Timeline.SpawnSidebar": {"parent_id", "reason", "inherit_last"},
    "Timeline.PauseContext": {"id"},
    "Timeline.ResumeContext": {"id"},
    "Timeline.MergeContext": {"id", "summary"},
    "Timeline.ArchiveContext": {"id", "reason"},
    "Timeline.RestoreContext": {"id"},
    "Timeline.ReparentContext": {"id", "new_parent_id"},
    "Timeline.GetContext": {"id"},
    "Timeline.GetTree": {"conversation_id"},
    "Timeline.Focus": {"context_id"},
    "Timeline.GetStartupState": set(),
    "Timeline.AppendBlock": {
        "context_id",
        "role",
        "content",
        "id",
        "timestamp",
        "time_taken",
        "tokens_input",
        "tokens_output",
        "metadata",
        "sub_blocks",
    },
    "Timeline.GetBlock": {"id"},
    "Timeline.ListBlocks": {"context_id", "after", "before", "limit", "roles", "since", "until"},
    "Timeline.GetHistory": {"context_id", "limit"},
    "Timeline.SearchBlocks": {"query", "conversation_id", "context_id", "role", "limit"},
    "Timeline.GetConversationStats": {"id"},
    "Timeline.SetTags": {"context_id", "tags"},
    "Timeline.AddCrossRef": {"from_id", "to_id", "kind", "note"},
    "Timeline.RevokeCrossRef": {"id"},
    "Admin.GetStatus": set(),
    "Admin.ReadLog": {"after_seq", "limit"},
    "Admin.GetRecoveryReport": {"id"},
    "Admin.ListReports": {"limit", "kind"},
    "Admin.Verify": {"wait"},
    "Admin.GetVerifyReport": set(),
    "Admin.Repair": set(),
    "Admin.Reload": set(),
}
REPLIES: dict[str, set[str]] = {
    "Timeline.CreateConversation": {"conversation"},
    "Timeline.ListConversations": {"conversations", "next"},
    "Timeline.SpawnSidebar": {"context"},
    "Timeline.GetTree": {"contexts"},
    "Timeline.GetStartupState": {"state"},
    "Timeline.AppendBlock": {"block", "seq"},
    "Timeline.GetBlock": {"block"},
    "Timeline.ListBlocks": {"blocks", "next"},
    "Timeline.GetHistory": {"blocks"},
    "Timeline.SearchBlocks": {"hits"},
    "Admin.GetStatus": {"status"},
    "Admin.ReadLog": {"events", "next"},
    "Admin.GetRecoveryReport": {"report"},
    "Admin.ListReports": {"reports"},
}


def _fields(tp: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(tp)}


def test_interface_files_match_the_declarations() -> None:
    assert_interface_files_current(api.INTERFACES, Path(api.__file__).parent / "interfaces")


def test_every_contract_method_has_its_exact_parameters() -> None:
    declared = {name.removeprefix("io.timelined."): m for name, m in api.METHODS.items()}
    assert set(CONTRACT) <= set(declared)
    for name, params in CONTRACT.items():
        assert _fields(declared[name].parameters) == params, name
    for name, fields in REPLIES.items():
        assert _fields(declared[name].reply) == fields, name
    status = _fields(api.Status)
    assert {"version", "last_seq", "head_hash", "boot", "verify", "uptime_s"} <= status
    assert {"connections", "writer", "read_only"} <= status
    assert {"verdict", "report_id"} <= _fields(api.BootStatus)


def test_limits_are_bounded() -> None:
    for name, m in api.METHODS.items():
        for f in msgspec.structs.fields(m.parameters):
            if f.name != "limit":
                continue
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert({**_required(m.parameters), "limit": 0}, m.parameters)
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert({**_required(m.parameters), "limit": 10**7}, m.parameters)
            assert f.default is msgspec.NODEFAULT or f.default is None or f.default <= 100, name


def _required(tp: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: "x" for f in msgspec.structs.fields(tp) if f.required}


def test_the_independent_varlink_parser_reads_our_interfaces() -> None:
    for interface in api.INTERFACES:
        parsed = varlink.Interface(interface.description)
        assert parsed.name == interface.name
        for m in interface.methods:
            assert parsed.get_method(m.name) is not None


def _sample_args(cls: type[TimelinedError], with_none: bool) -> dict[str, Any]:
    hints = typing.get_type_hints(cls.__init__)
    args: dict[str, Any] = {}
    for name, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        tp = hints.get(name, str)
        options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
        if with_none and type(None) in options:
            args[name] = None
        elif int in options:
            args[name] = 7
        else:
            args[name] = "x"
    return args


SERVER_SIDE = [
    cls
    for cls in all_error_classes()
    if not issubclass(cls, client_mod.VarlinkServiceError | client_mod.RemoteError)
]


@pytest.mark.parametrize("cls", SERVER_SIDE, ids=lambda c: c.name)
def test_every_named_error_is_declared_with_its_parameters(cls: type[TimelinedError]) -> None:
    declared = [e for interface in api.INTERFACES for e in interface.errors if e.name == cls.name]
    assert declared, f"{cls.name} is declared in no interface of timelined.api"
    for error_def in declared:
        assert error_def.parameters is not None
        for with_none in (False, True):
            exc = cls(**_sample_args(cls, with_none))
            error_def.check(dict(exc.params))  # types match (strict)
            assert set(exc.params) <= _fields(error_def.parameters), cls.name
    if cls.name == "InternalError":  # the server's own form of it, too
        declared[0].check({"message": "m", "exception": "RuntimeError"})


def test_timeline_errors_cover_what_the_rules_raise() -> None:
    names = {e.name for e in api.TIMELINE.errors}
    assert {
        "ConversationNotFound",
        "ContextNotFound",
        "BlockNotFound",
        "CrossRefNotFound",
        "InvalidTransition",
        "CycleError",
        "CrossConversationMove",
        "BlockIdConflict",
        "LimitExceeded",
        "InvalidArgument",
        "BadQuery",
        "PermissionDenied",
        "LogDamaged",
        "DiskFull",
    } <= names
    assert {"ReportNotFound", "ConfigError", "FeatureUnavailable"} <= {
        e.name for e in api.ADMIN.errors
    }


def test_every_method_is_classified_for_auth() -> None:
    declared = set(api.METHODS)
    assert not READ_ONLY_METHODS & WRITE_METHODS
    assert declared == READ_ONLY_METHODS | WRITE_METHODS, (
        "classify every method as reading (READ_ONLY_METHODS) or writing (WRITE_METHODS) in "
        "timelined/daemon/auth.py"
    )


_SNAKE_EXCEPTIONS = {"AddCrossRef": "add_crossref", "RevokeCrossRef": "revoke_crossref"}


def _snake(name: str) -> str:
    return _SNAKE_EXCEPTIONS.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("cls", [client_mod.Client, client_mod.AsyncClient])
def test_the_client_has_a_typed_method_per_varlink_method(cls: type[Any]) -> None:
    for name, m in api.METHODS.items():
        method = getattr(cls, _snake(m.name), None)
        assert method is not None, f"{cls.__name__} has no method for {name}"
        params = set(inspect.signature(method).parameters) - {"self"}
        assert params == _fields(m.parameters), name
        assert inspect.iscoroutinefunction(method) == (cls is client_mod.AsyncClient)


def test_timelinectl_has_a_verb_per_method() -> None:
    source = "".join(p.read_text() for p in CTL_DIR.glob("*.py"))
    missing = [name for name, m in api.METHODS.items() if f'"{m.name}"' not in source]
    assert not missing, f"no timelinectl verb calls {missing}"
