"""Interface definition text generated from the Python types; parsed by the varlink package."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest
import varlink

from tests.varlink.demo import TEST
from timelined.varlink.gen import (
    assert_interface_files_current,
    check_interface_files,
    main,
    write_interface_files,
)
from timelined.varlink.interface import ErrorDef, Interface, InterfaceDefinitionError, Method
from timelined.varlink.service import SERVICE


class Status(enum.Enum):
    """Where a thing is."""

    active = "active"
    paused = "paused"


class Leaf(msgspec.Struct, frozen=True):
    n: int


class Node(msgspec.Struct, frozen=True, rename="camel"):
    """A node of a tree."""

    node_id: str
    children: list[Node] = []
    leaf: Leaf | None = None


class Params(msgspec.Struct, frozen=True):
    flag: bool
    ratio: float
    name: Annotated[str, msgspec.Meta(description="who asks")]
    mode: Literal["fast", "slow"]
    status: Status
    tags: tuple[str, ...]
    scores: dict[str, float]
    meta: dict[str, Any]
    anything: Any
    nodes: list[Node]
    limit: int = 50
    after: str | None = None


class Reply(msgspec.Struct, frozen=True):
    node: Node
    maybe: list[int | None]


class OopsParams(msgspec.Struct, frozen=True):
    what: str
    message: str


EXAMPLE = Interface(
    name="org.example.kitchen-sink",
    doc="Every type the generator knows.\n\nTwo paragraphs.",
    methods=[Method("Do", Params, Reply, doc="Does it."), Method("Ping", Leaf, Leaf)],
    errors=[ErrorDef("Oops", OopsParams, "It went wrong."), ErrorDef("Gone")],
)

EXPECTED = """\
# Every type the generator knows.
#
# Two paragraphs.
interface org.example.kitchen-sink

# Where a thing is.
type Status (active, paused)

# A node of a tree.
type Node (nodeId: string, children: ?[]Node, leaf: ?Leaf)

type Leaf (n: int)

# Does it.
method Do(
  flag: bool,
  ratio: float,
  # who asks
  name: string,
  mode: (fast, slow),
  status: Status,
  tags: []string,
  scores: [string]float,
  meta: object,
  anything: object,
  nodes: []Node,
  limit: ?int,
  after: ?string
) -> (node: Node, maybe: []?int)

method Ping(n: int) -> (n: int)

# It went wrong.
error Oops (what: string, message: string)

error Gone ()
"""


def test_generated_text_is_exactly_as_designed() -> None:
    assert EXAMPLE.description == EXPECTED


@pytest.mark.parametrize("interface", [EXAMPLE, TEST, SERVICE], ids=lambda i: i.name)
def test_the_varlink_package_parses_what_we_generate(interface: Interface) -> None:
    parsed = varlink.Interface(interface.description)
    assert parsed.name == interface.name
    names = [m.name for m in interface.methods] + [e.name for e in interface.errors]
    assert all(n in parsed.members for n in names)
    for m in interface.methods:
        pm = parsed.get_method(m.name)
        fields = [f.encode_name for f in msgspec.structs.fields(m.parameters)]
        assert list(pm.in_type.fields) == fields


# What https://varlink.org/Service adds to the copy of the standard in the `varlink` package.
_STANDARD_SINCE = """
# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
"""


def test_the_service_interface_matches_the_standard() -> None:
    packaged = Path(varlink.__file__).with_name("org.varlink.service.varlink").read_text()
    ours = varlink.Interface(SERVICE.description)
    theirs = varlink.Interface(packaged + _STANDARD_SINCE)
    assert list(ours.members) == list(theirs.members)
    for name, member in theirs.members.items():
        fields = ("in_type", "out_type") if hasattr(member, "in_type") else ("type",)
        for attr in fields:
            mine = getattr(ours.members[name], attr)
            assert list(mine.fields) == list(getattr(member, attr).fields), (name, attr)


class _Bad(msgspec.Struct):
    x: int | str


class _OneEnum(msgspec.Struct):
    x: Literal["only"]


class _IntKeys(msgspec.Struct):
    x: dict[int, str]


class _BadField(msgspec.Struct, rename={"x": "has-dash"}):
    x: int


class _Arr(msgspec.Struct, array_like=True):
    x: int


def _other_leaf() -> type[msgspec.Struct]:
    other = msgspec.defstruct("Leaf", [("m", int)])  # same name as Leaf, another class
    return msgspec.defstruct("Holder", [("a", other)])


class _TwoLeaves(msgspec.Struct):
    a: Leaf
    b: Any


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Interface("nodots", "", []), "reverse-domain"),
        (lambda: Interface("org.example.x", "", [Method("lower", Leaf, Leaf)]), "CamelCase"),
        (lambda: Method("Do", dict, Leaf), "msgspec Struct"),  # type: ignore[type-var]
        (lambda: Interface("a.b", "", [Method("M", _Bad, Leaf)]), "union"),
        (lambda: Interface("a.b", "", [Method("M", _OneEnum, Leaf)]), "two values"),
        (lambda: Interface("a.b", "", [Method("M", _IntKeys, Leaf)]), "keys must be str"),
        (lambda: Interface("a.b", "", [Method("M", _BadField, Leaf)]), "field name"),
        (lambda: Interface("a.b", "", [Method("M", _Arr, Leaf)]), "array_like"),
        (
            lambda: Interface(
                "a.b", "", [Method("M", _TwoLeaves, Leaf), Method("N", _other_leaf(), Leaf)]
            ),
            "two different types",
        ),
        (lambda: Interface("a.b", "", [Method("M", Leaf, Leaf), Method("M", Leaf, Leaf)]), "dup"),
        (lambda: ErrorDef("bad name"), "CamelCase"),
    ],
)
def test_declarations_without_a_varlink_form_are_refused(make: Any, match: str) -> None:
    with pytest.raises(InterfaceDefinitionError, match=match):
        make()


def test_error_params_can_be_checked_against_the_declaration() -> None:
    oops = EXAMPLE.errors[0]
    oops.check({"what": "x", "message": "m"})
    with pytest.raises(msgspec.ValidationError):
        oops.check({"what": 1, "message": "m"})
    with pytest.raises(msgspec.ValidationError):
        EXAMPLE.errors[1].check({"unexpected": 1})


def test_committed_files_are_checked_for_drift(tmp_path: Path) -> None:
    assert check_interface_files([TEST], tmp_path) != []  # missing
    assert write_interface_files([TEST, EXAMPLE], tmp_path) == [
        tmp_path / "io.timelined.Test.varlink",
        tmp_path / "org.example.kitchen-sink.varlink",
    ]
    assert write_interface_files([TEST], tmp_path) == []  # unchanged: not rewritten
    assert_interface_files_current([TEST, EXAMPLE], tmp_path)
    path = tmp_path / "io.timelined.Test.varlink"
    path.write_text(path.read_text().replace("Echo", "Echoes"))
    with pytest.raises(AssertionError, match=r"(?s)python -m timelined\.varlink\.gen --dir .*-"):
        assert_interface_files_current([TEST], tmp_path)


def test_gen_script_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests.varlink.demo:TEST"
    assert main(["--check", "--dir", str(tmp_path), spec]) == 1
    assert main(["--dir", str(tmp_path), spec]) == 0
    assert "io.timelined.Test.varlink" in capsys.readouterr().out
    assert main(["--check", "--dir", str(tmp_path), spec]) == 0
    assert (tmp_path / "io.timelined.Test.varlink").read_text() == TEST.description
