"""The public contract, checked without a daemon: interface files, errors, auth, client, ctl."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import varlink

from timelined import api
from timelined import client as client_mod
from timelined import errors as err
from timelined.api import gen
from timelined.api.gen import COMMAND, stale_interface_files
from timelined.daemon.auth import READ_ONLY_METHODS, WRITE_METHODS
from timelined.errors import TimelinedError, all_error_classes

CTL_DIR = Path(client_mod.__file__).parent / "ctl"

# The contract of issue 3 / issue 7: method → its access class (what a read-only peer may call)
# and the parameter names clients rely on. Pinned by hand on purpose: a method moved from read to
# write, or a parameter renamed, breaks clients. A new method needs no line here.
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "Timeline.CreateConversation": ("write", {"name", "metadata"}),
    "Timeline.ListConversations": ("read", {"include_archived", "limit", "after", "name"}),
    "Timeline.GetConversation": ("read", {"id"}),
    "Timeline.UpdateConversation": ("write", {"id", "name", "metadata"}),
    "Timeline.ArchiveConversation": ("write", {"id", "reason"}),
    "Timeline.SpawnSidebar": ("write", {"parent_id", "reason", "inherit_last"}),
    "Timeline.PauseContext": ("write", {"id"}),
    "Timeline.ResumeContext": ("write", {"id"}),
    "Timeline.MergeContext": ("write", {"id", "summary"}),
    "Timeline.ArchiveContext": ("write", {"id", "reason"}),
    "Timeline.RestoreContext": ("write", {"id"}),
    "Timeline.ReparentContext": ("write", {"id", "new_parent_id"}),
    "Timeline.GetContext": ("read", {"id"}),
    "Timeline.GetTree": ("read", {"conversation_id", "after"}),
    "Timeline.ListCrossRefs": ("read", {"context_id", "after", "limit"}),
    "Timeline.AppendBlocks": ("write", {"context_id", "blocks"}),
    "Timeline.Focus": ("write", {"context_id"}),
    "Timeline.GetStartupState": ("read", set()),
    "Timeline.AppendBlock": (
        "write",
        {
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
    ),
    "Timeline.RetractBlock": ("write", {"id", "reason"}),
    "Timeline.GetBlock": ("read", {"id"}),
    "Timeline.ListBlocks": (
        "read",
        {"context_id", "after", "before", "limit", "roles", "since", "until", "include_retracted"},
    ),
    "Timeline.GetHistory": ("read", {"context_id", "limit"}),
    "Timeline.SearchBlocks": ("read", {"query", "conversation_id", "context_id", "role", "limit"}),
    "Timeline.GetConversationStats": ("read", {"id"}),
    "Timeline.SetTags": ("write", {"context_id", "tags"}),
    "Timeline.AddCrossRef": ("write", {"from_id", "to_id", "kind", "note"}),
    "Timeline.RevokeCrossRef": ("write", {"id"}),
    "Admin.GetStatus": ("read", set()),
    "Admin.ReadLog": ("read", {"after_seq", "limit"}),
    "Admin.GetRecoveryReport": ("read", {"id"}),
    "Admin.ListReports": ("read", {"limit", "kind"}),
    "Admin.Verify": ("admin", {"wait"}),
    "Admin.GetVerifyReport": ("read", set()),
    "Admin.Repair": ("admin", set()),
    "Admin.Reload": ("admin", set()),
    "Admin.GetMetrics": ("read", set()),
    "Timeline.Watch": ("read", {"conversation_id", "after_seq"}),
    "Timeline.ExportConversation": ("read", {"id"}),
    "Timeline.ImportConversation": ("write", {"document", "mode"}),
}
REPLIES: dict[str, set[str]] = {
    "Timeline.CreateConversation": {"conversation"},
    "Timeline.ListConversations": {"conversations", "next"},
    "Timeline.SpawnSidebar": {"context"},
    "Timeline.GetTree": {"contexts", "next"},
    "Timeline.ListCrossRefs": {"crossrefs", "next"},
    "Timeline.AppendBlocks": {"blocks"},
    "Timeline.ExportConversation": {"header", "contexts", "events", "blocks", "proofs", "end"},
    "Timeline.GetStartupState": {"state"},
    "Timeline.AppendBlock": {"block", "seq"},
    "Timeline.RetractBlock": {"block"},
    "Timeline.GetBlock": {"block"},
    "Timeline.ListBlocks": {"blocks", "next"},
    "Timeline.GetHistory": {"blocks"},
    "Timeline.SearchBlocks": {"hits", "truncated", "indexed_seq"},
    "Admin.GetStatus": {"status"},
    "Admin.ReadLog": {"events", "next", "segments"},
    "Admin.GetRecoveryReport": {"report"},
    "Admin.ListReports": {"reports"},
}


def _fields(tp: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(tp)}


def test_interface_files_match_the_declarations() -> None:
    problems = stale_interface_files()
    assert not problems, f"the .varlink files are stale; run {COMMAND}\n" + "\n".join(problems)


def test_the_generator_writes_and_checks_a_directory(tmp_path: Path) -> None:
    assert gen.main(["--dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(i.file_name for i in api.INTERFACES)
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 0
    stale = tmp_path / api.ADMIN.file_name
    stale.write_text(stale.read_text().replace("method Reload", "method Reloaded"))
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert stale_interface_files(tmp_path)


_LOWER_LAYER_ONLY = """
import sys
import timelined.api
print("\\n".join(sorted(sys.modules)))
"""
_ABOVE_THE_API = (
    "timelined.auditlog",
    "timelined.client",
    "timelined.ctl",
    "timelined.daemon",
    "timelined.exchange",
    "timelined.recovery",
    "timelined.state",
    "timelined.verifier",
    "timelined.writer",
)


def test_the_api_imports_nothing_above_it() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _LOWER_LAYER_ONLY],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = run.stdout.split()
    assert "timelined.api.methods" in loaded
    above = [m for m in loaded if m.startswith(tuple(p + "." for p in _ABOVE_THE_API))]
    above += [m for m in loaded if m in _ABOVE_THE_API]
    assert not above, f"importing timelined.api loads {above}"


def test_every_contract_method_has_its_exact_parameters() -> None:
    declared = {name.removeprefix("io.timelined."): m for name, m in api.METHODS.items()}
    assert set(CONTRACT) <= set(declared)
    for name, (access, params) in CONTRACT.items():
        assert _fields(declared[name].parameters) == params, name
        assert api.ACCESS[f"io.timelined.{name}"] == access, name
    for name, fields in REPLIES.items():
        assert _fields(declared[name].reply) == fields, name
    status = _fields(api.Status)
    assert {"version", "last_seq", "head_hash", "boot", "verify", "uptime_s"} <= status
    assert {"connections", "writer", "read_only", "log"} <= status
    assert _fields(api.LogStatus) == {"backend", "segment_bytes", "stored_bytes", "segments"}
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


def test_auth_lists_are_derived_from_the_access_classes() -> None:
    assert set(api.ACCESS) == set(api.METHODS)
    assert {name for name, a in api.ACCESS.items() if a == "read"} == READ_ONLY_METHODS
    assert set(api.METHODS) - READ_ONLY_METHODS == WRITE_METHODS
    admin = {name.rpartition(".")[2] for name, a in api.ACCESS.items() if a == "admin"}
    assert admin == {"Verify", "Repair", "Reload"}


def _declared_error_classes() -> dict[str, str]:
    """Every error name an interface declares → the `timelined.errors` class declaring it."""
    classes = {c.name: c for c in all_error_classes() if c.__module__ == err.__name__}
    return {
        f"io.timelined.{e.name}": classes[e.name].__qualname__
        for interface in api.INTERFACES
        for e in interface.errors
    }


_DECODE_IN_A_FRESH_CLIENT = """
import json, sys
from timelined.client import error_from_reply
from timelined.varlink.errors import VarlinkErrorReply

decoded = {}
for name in json.loads(sys.stdin.read()):
    exc = error_from_reply(VarlinkErrorReply(name, {"message": "m"}))
    decoded[name] = [type(exc).__module__, type(exc).__qualname__]
print(json.dumps(decoded))
"""


def test_a_fresh_client_decodes_every_declared_error_to_its_class() -> None:
    """Only `timelined.client` imported: its name → class table must not rely on import order."""
    want = _declared_error_classes()
    run = subprocess.run(
        [sys.executable, "-c", _DECODE_IN_A_FRESH_CLIENT],
        input=json.dumps(sorted(want)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    got = json.loads(run.stdout)
    assert got == {name: ["timelined.errors", cls] for name, cls in want.items()}


def test_every_error_class_lives_in_errors_py() -> None:
    declared = {e.name for interface in api.INTERFACES for e in interface.errors}
    for name in declared:
        assert isinstance(getattr(err, name, None), type), f"{name} is not in timelined/errors.py"
    assert {"BootFailed", "FeatureUnavailable"} <= declared


_SNAKE_EXCEPTIONS = {
    "AddCrossRef": "add_crossref",
    "RevokeCrossRef": "revoke_crossref",
    "ListCrossRefs": "list_crossrefs",
}


def _snake(name: str) -> str:
    return _SNAKE_EXCEPTIONS.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("cls", [client_mod.Client, client_mod.AsyncClient])
def test_the_clients_typed_methods_take_exactly_the_declared_parameters(cls: type[Any]) -> None:
    """Every declared method is callable through `invoke` (tests/client/test_contract.py
    calls each one); a typed convenience method is optional, but where one exists it takes
    exactly the method's parameters, by name."""
    for entry in ("invoke", "invoke_stream"):
        assert inspect.iscoroutinefunction(getattr(cls, entry)) == (cls is client_mod.AsyncClient)
    for name, m in api.METHODS.items():
        method = getattr(cls, _snake(m.name), None)
        if method is None:
            continue
        params = set(inspect.signature(method).parameters) - {"self"}
        assert params == _fields(m.parameters), name
        assert inspect.iscoroutinefunction(method) == (cls is client_mod.AsyncClient)


def test_timelinectl_has_a_verb_per_method() -> None:
    source = "".join(p.read_text() for p in CTL_DIR.glob("*.py"))
    missing = [name for name, m in api.METHODS.items() if f'"{m.name}"' not in source]
    assert not missing, f"no timelinectl verb calls {missing}"
