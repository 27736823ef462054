"""Varlink interfaces declared once, in Python, and their interface definition text (IDL).

An interface is a name, a doc, methods and errors. Each method names a msgspec Struct for its
parameters and one for its reply; the same Structs validate calls at run time and produce the
`.varlink` text here, so the published description cannot drift from what is enforced.

Type mapping (Python → Varlink):

| Python | Varlink |
| --- | --- |
| `bool`, `int`, `float`, `str` | `bool`, `int`, `float`, `string` |
| `bytes`, `datetime`, `date`, `time`, `UUID`, `Decimal` | `string` (msgspec's JSON form) |
| `T \\| None`, or any field with a default | `?T` (the caller may omit it) |
| `list[T]`, `tuple[T, ...]` | `[]T` |
| `dict[str, T]` | `[string]T` |
| `dict[str, Any]`, `Any`, `msgspec.Raw` | `object` |
| `Literal["a", "b"]` | `(a, b)` |
| a nested Struct `Foo`, an `enum.Enum` `Bar` | `Foo`, `Bar`, declared as `type Foo (...)` |
| `Annotated[T, Meta(description=...)]` | `T`, with the description as a comment |

A field with a non-None default is written `?T` because a caller may omit it; a reply that is
always sent in full is still correct under `?T` (a client must then accept absence). `?T` also
allows null, so the server takes null and absence there as one (`normalize_optional`).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import inspect
import re
import types
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import msgspec

__all__ = [
    "ErrorDef",
    "Interface",
    "InterfaceDefinitionError",
    "Method",
    "check_interface_file",
    "has_optional_fields",
    "iter_interfaces",
    "normalize_optional",
    "render_interface",
]

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)

LINE_WIDTH = 100

INTERFACE_NAME = re.compile(r"^[A-Za-z](-*[A-Za-z0-9])*(\.[A-Za-z0-9](-*[A-Za-z0-9])*)+$")
MEMBER_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
FIELD_NAME = re.compile(r"^[A-Za-z](_?[A-Za-z0-9])*$")

_STRING_LIKE: tuple[type, ...] = (
    bytes,
    bytearray,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
)
_SCALARS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "string"}


class InterfaceDefinitionError(TypeError):
    """A declaration that cannot be expressed in Varlink; the message names where."""


@dataclass(frozen=True, slots=True)
class Method(Generic[P, R]):
    """One method: `parameters` validates the call, `reply` is what the handler returns."""

    name: str
    parameters: type[P]
    reply: type[R]
    doc: str = ""

    def __post_init__(self) -> None:
        if not MEMBER_NAME.match(self.name):
            raise InterfaceDefinitionError(f"method name {self.name!r} must be CamelCase")
        for what, tp in (("parameters", self.parameters), ("reply", self.reply)):
            if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
                raise InterfaceDefinitionError(f"{self.name}.{what} must be a msgspec Struct")


@dataclass(frozen=True, slots=True)
class ErrorDef:
    """One named error of an interface; `parameters` describes its parameters (None: none)."""

    name: str
    parameters: type[msgspec.Struct] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if not MEMBER_NAME.match(self.name):
            raise InterfaceDefinitionError(f"error name {self.name!r} must be CamelCase")

    def check(self, parameters: Any) -> None:
        """Raise msgspec.ValidationError when `parameters` do not match the declaration."""
        if self.parameters is None:
            if parameters:
                raise msgspec.ValidationError(f"{self.name} declares no parameters")
            return
        msgspec.convert(parameters, self.parameters, strict=True)


@dataclass(frozen=True)
class Interface:
    """A Varlink interface: reverse-domain `name`, `doc`, methods and errors, in file order."""

    name: str
    doc: str
    methods: Sequence[Method[Any, Any]]
    errors: Sequence[ErrorDef] = field(default=())

    def __post_init__(self) -> None:
        if not INTERFACE_NAME.match(self.name):
            raise InterfaceDefinitionError(
                f"interface name {self.name!r} is not a reverse-domain Varlink name"
            )
        # Tuples, so that the declaration is as immutable as it looks.
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "errors", tuple(self.errors))
        names = [m.name for m in self.methods] + [e.name for e in self.errors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InterfaceDefinitionError(f"{self.name}: duplicate member names {dupes}")
        self.description  # noqa: B018 — render now, so a bad type fails at import time

    @functools.cached_property
    def description(self) -> str:
        """The interface definition text, as served by GetInterfaceDescription."""
        return render_interface(self)

    def method(self, name: str) -> Method[Any, Any]:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"{self.name} has no method {name!r}")

    @property
    def file_name(self) -> str:
        return f"{self.name}.varlink"


def _doc_lines(doc: str | None, indent: str = "") -> list[str]:
    if not doc:
        return []
    lines = [line.rstrip() for line in inspect.cleandoc(doc).splitlines()]
    return [f"{indent}# {line}" if line else f"{indent}#" for line in lines]


class _Renderer:
    """Collects the named types a set of members refers to, in order of first use."""

    def __init__(self, interface_name: str) -> None:
        self.interface_name = interface_name
        self.types: dict[str, list[str] | None] = {}
        self.owners: dict[str, object] = {}

    # --- types -----------------------------------------------------------------------------

    def type_of(self, tp: Any, where: str) -> str:
        origin = get_origin(tp)
        if origin is Annotated:
            return self.type_of(get_args(tp)[0], where)
        if tp is Any or tp is object or tp is msgspec.Raw:
            return "object"
        scalar = _SCALARS.get(tp)
        if scalar is not None:
            return scalar
        if isinstance(tp, type) and issubclass(tp, _STRING_LIKE):
            return "string"
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                raise InterfaceDefinitionError(
                    f"{where}: union {tp!r} has no Varlink form (only `T | None` does)"
                )
            inner = self.type_of(members[0], where)
            return inner if inner.startswith("?") else f"?{inner}"
        if origin is Literal:
            return self._enum(list(get_args(tp)), where)
        if origin in (list, Sequence) or (origin is tuple and _is_homogeneous(tp)):
            return "[]" + self.type_of(get_args(tp)[0], f"{where}[]")
        if origin is dict or tp is dict:
            key, value = get_args(tp) or (str, Any)
            if key is not str:
                raise InterfaceDefinitionError(f"{where}: dict keys must be str")
            if value is Any:
                return "object"
            return "[string]" + self.type_of(value, f"{where}[]")
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self._named_struct(tp, where)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._named_enum(tp, where)
        supertype = getattr(tp, "__supertype__", None)  # typing.NewType
        if supertype is not None:
            return self.type_of(supertype, where)
        raise InterfaceDefinitionError(f"{where}: type {tp!r} has no Varlink form")

    def _enum(self, values: list[Any], where: str) -> str:
        if len(values) < 2:
            # The grammar allows `(a)`, but common parsers (python varlink) read it as a
            # malformed struct; a one-value enum says nothing a string does not.
            raise InterfaceDefinitionError(f"{where}: an enum needs at least two values")
        for v in values:
            if not isinstance(v, str) or not FIELD_NAME.match(v):
                raise InterfaceDefinitionError(
                    f"{where}: enum value {v!r} is not a Varlink identifier"
                )
        return "(" + ", ".join(values) + ")"

    def _claim(self, name: str, owner: object, where: str) -> bool:
        """True when the type still has to be rendered."""
        if not MEMBER_NAME.match(name):
            raise InterfaceDefinitionError(f"{where}: type name {name!r} must be CamelCase")
        known = self.owners.get(name)
        if known is None:
            self.owners[name] = owner
            self.types[name] = None  # placeholder: keeps first-use order, stops recursion
            return True
        if known is not owner:
            raise InterfaceDefinitionError(
                f"{where}: two different types are both named {name!r} in {self.interface_name}"
            )
        return False

    def _named_struct(self, tp: type[msgspec.Struct], where: str) -> str:
        name = tp.__name__
        if self._claim(name, tp, where):
            head = f"type {name} "
            self.types[name] = _doc_lines(tp.__doc__) + self._struct_lines(head, tp, name)
        return name

    def _named_enum(self, tp: type[enum.Enum], where: str) -> str:
        name = tp.__name__
        if self._claim(name, tp, where):
            body = self._enum([m.value for m in tp], f"{where} ({name})")
            self.types[name] = [*_doc_lines(tp.__doc__), f"type {name} {body}"]
        return name

    # --- structs ---------------------------------------------------------------------------

    def fields(self, tp: type[msgspec.Struct], where: str) -> list[tuple[str, str, str]]:
        """(name, varlink type, doc) per field, in declaration order."""
        config = tp.__struct_config__
        if config.array_like or config.tag is not None:
            raise InterfaceDefinitionError(
                f"{where}: array_like and tagged Structs have no Varlink form"
            )
        out: list[tuple[str, str, str]] = []
        for f in msgspec.structs.fields(tp):
            fname = f.encode_name
            if not FIELD_NAME.match(fname):
                raise InterfaceDefinitionError(
                    f"{where}.{fname}: not a Varlink field name (letters, digits, single _)"
                )
            vtype = self.type_of(f.type, f"{where}.{fname}")
            if not f.required and not vtype.startswith("?"):
                vtype = f"?{vtype}"
            out.append((fname, vtype, _description(f.type)))
        return out

    def _struct_lines(self, head: str, tp: type[msgspec.Struct], where: str) -> list[str]:
        return _layout(head, self.fields(tp, where))

    def method_lines(self, m: Method[Any, Any]) -> list[str]:
        ins = self.fields(m.parameters, f"{m.name}.parameters")
        outs = self.fields(m.reply, f"{m.name}.reply")
        first = _layout(f"method {m.name}", ins)
        lines = first[:-1] + _layout(first[-1] + " -> ", outs)
        return [*_doc_lines(m.doc), *lines]

    def error_lines(self, e: ErrorDef) -> list[str]:
        fields = self.fields(e.parameters, f"error {e.name}") if e.parameters else []
        return [*_doc_lines(e.doc), *_layout(f"error {e.name} ", fields)]


def _is_homogeneous(tp: Any) -> bool:
    args = get_args(tp)
    return len(args) == 2 and args[1] is Ellipsis


def _description(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        for meta in get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta) and meta.description:
                return meta.description
    return ""


def _inline(fields: list[tuple[str, str, str]]) -> str:
    return "(" + ", ".join(f"{n}: {t}" for n, t, _ in fields) + ")"


def _layout(head: str, fields: list[tuple[str, str, str]]) -> list[str]:
    """`head(fields)` on one line when it fits and no field has a doc, else a field a line."""
    single = head + _inline(fields)
    if not fields or (len(single) <= LINE_WIDTH and not any(d for *_, d in fields)):
        return [single]
    lines = [head + "("]
    last = len(fields) - 1
    for i, (name, vtype, doc) in enumerate(fields):
        lines.extend(_doc_lines(doc, "  "))
        lines.append(f"  {name}: {vtype}{',' if i < last else ''}")
    lines.append(")")
    return lines


def render_interface(interface: Interface) -> str:
    """The `.varlink` text of an interface: doc, `interface`, types, methods, errors."""
    r = _Renderer(interface.name)
    methods = [r.method_lines(m) for m in interface.methods]
    errors = [r.error_lines(e) for e in interface.errors]
    blocks: list[list[str]] = [[*_doc_lines(interface.doc), f"interface {interface.name}"]]
    blocks.extend(lines for lines in r.types.values() if lines is not None)
    blocks.extend(methods)
    blocks.extend(errors)
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def normalize_optional(tp: Any, value: Any) -> Any:
    """`value` (decoded JSON meant for `tp`) with null and absence made one for `?T` fields.

    Varlink's `?T` means "null or absent". A field with a default is rendered `?T`, so a null
    there is dropped (the default applies); a field typed `T | None` without a default is
    rendered `?T` too, so its absence becomes null. Values of type `object` are left alone: a
    null inside metadata is data.
    """
    origin = get_origin(tp)
    if origin is Annotated:
        return normalize_optional(get_args(tp)[0], value)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return normalize_optional(members[0], value) if len(members) == 1 else value
    if isinstance(value, list) and (
        origin in (list, Sequence) or (origin is tuple and _is_homogeneous(tp))
    ):
        item = get_args(tp)[0]
        return [normalize_optional(item, v) for v in value]
    if isinstance(value, dict) and origin is dict:
        item = get_args(tp)[1]
        return {k: normalize_optional(item, v) for k, v in value.items()}
    if isinstance(value, dict) and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
        out = {}
        for key, v in value.items():
            f = fields.get(key)
            if f is None:
                out[key] = v  # unknown: the decoder names it
            elif v is not None:
                out[key] = normalize_optional(f.type, v)
            elif f.required:
                out[key] = v  # null where a value is required: the decoder says so
        for key, f in fields.items():
            if f.required and key not in out and _nullable(f.type):
                out[key] = None
        return out
    return value


def has_optional_fields(tp: Any) -> bool:
    """Whether any Struct reachable from `tp` has a `?T` field (see `normalize_optional`)."""
    return _has_optional(tp, set())


def _nullable(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        return _nullable(get_args(tp)[0])
    return type(None) in get_args(tp)


def _has_optional(tp: Any, seen: set[Any]) -> bool:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp in seen:
            return False
        seen.add(tp)
        return any(
            not f.required or _nullable(f.type) or _has_optional(f.type, seen)
            for f in msgspec.structs.fields(tp)
        )
    return any(_has_optional(a, seen) for a in get_args(tp) if a is not Ellipsis)


def check_interface_file(interface: Interface, path: str | Path) -> str | None:
    """None when the committed file equals the generated text, else a unified diff."""
    p = Path(path)
    want = interface.description
    try:
        have = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{p} is missing; generate it with python -m timelined.varlink.gen"
    if have == want:
        return None
    import difflib  # a check's (tests, the generator): never the daemon's start-up

    diff = difflib.unified_diff(
        have.splitlines(keepends=True),
        want.splitlines(keepends=True),
        fromfile=f"{p} (committed)",
        tofile=f"{interface.name} (generated)",
    )
    return "".join(diff)


def iter_interfaces(obj: object) -> Iterable[Interface]:
    """An Interface, or an iterable of them, as a flat sequence (for the generator)."""
    if isinstance(obj, Interface):
        yield obj
        return
    if isinstance(obj, Iterable):
        for item in obj:
            yield from iter_interfaces(item)
        return
    raise TypeError(f"expected an Interface or an iterable of them, got {type(obj).__name__}")
