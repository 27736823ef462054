"""Varlink message vocabulary shared by the server and the clients: error names, replies.

Error names this layer sends on its own (everything else comes from a handler):

- `org.varlink.service.InterfaceNotFound`, `MethodNotFound`, `MethodNotImplemented`,
  `InvalidParameter` — the standard ones, with exactly the standard parameter and nothing else
  (the validator's text for an `InvalidParameter` goes to the server's log; `parameter` is
  `upgrade` for a call asking for a protocol upgrade, which no method offers);
- the library's own errors (`errors.py`), which the server's error mapper may rename:
  `ProtocolViolation` for a frame that is not a Varlink call (malformed JSON, a NUL inside the
  JSON, which splits the frame, JSON that is not an object, a missing or non-string `method`),
  after which the connection is closed: once framing is in doubt, nothing after it on the
  stream can be trusted; `LimitReached` for a frame over `max_message_bytes` (then closed) or a
  connection over `max_connections` (then closed); `InternalFailure` when a handler failed
  unexpectedly (the traceback is in the log, the connection keeps working); `ServerStopping`
  for a call that arrived (or a stream that was running) when the server began to stop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from timelined.varlink.errors import ProtocolViolation, VarlinkErrorReply

__all__ = [
    "INTERFACE_NOT_FOUND",
    "INVALID_PARAMETER",
    "METHOD_NOT_FOUND",
    "METHOD_NOT_IMPLEMENTED",
    "SERVICE_INTERFACE",
    "VarlinkErrorReply",
    "append_reply",
    "encode_call",
    "encode_error",
    "invalid_parameter",
    "parse_reply",
]

SERVICE_INTERFACE = "org.varlink.service"
INTERFACE_NOT_FOUND = "org.varlink.service.InterfaceNotFound"
METHOD_NOT_FOUND = "org.varlink.service.MethodNotFound"
METHOD_NOT_IMPLEMENTED = "org.varlink.service.MethodNotImplemented"
INVALID_PARAMETER = "org.varlink.service.InvalidParameter"
EXPECTED_MORE = "org.varlink.service.ExpectedMore"


class _ErrorReply(msgspec.Struct):
    error: str
    parameters: Mapping[str, Any]


class _Call(msgspec.Struct, omit_defaults=True):
    method: str
    parameters: Any = None
    more: bool = False
    oneway: bool = False


class _Reply(msgspec.Struct):
    # The protocol declares a reply as (parameters: ?object, continues: ?bool, error: ?string):
    # null is as good as absent in each.
    parameters: msgspec.Raw = msgspec.Raw(b"{}")
    continues: bool | None = False
    error: str | None = None


_ENCODER = msgspec.json.Encoder()
_REPLY = msgspec.json.Decoder(_Reply)
_EMPTY = msgspec.Raw(b"{}")
_OBJECT: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])
_REPLY_HEAD = b'{"parameters":'
_REPLY_LAST = b"}\0"
_REPLY_CONTINUES = b',"continues":true}\0'


def append_reply(out: bytearray, reply: Any, continues: bool = False) -> None:
    """Append one reply frame (NUL included) to `out` without an intermediate bytes object."""
    out += _REPLY_HEAD
    _ENCODER.encode_into(reply, out, -1)
    out += _REPLY_CONTINUES if continues else _REPLY_LAST


def parse_reply(frame: bytes) -> tuple[msgspec.Raw, bool, VarlinkErrorReply | None]:
    """A reply frame's parameters (`{}` for null), its `continues`, and the error it carries.

    Raises ProtocolViolation for a frame that is not a Varlink reply.
    """
    try:
        reply = _REPLY.decode(frame)
        parameters = _EMPTY if bytes(reply.parameters) == b"null" else reply.parameters
        error = None
        if reply.error is not None:
            error = VarlinkErrorReply(reply.error, _OBJECT.decode(parameters))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolViolation(f"reply is not a Varlink message: {exc}") from None
    return parameters, bool(reply.continues), error


def encode_error(name: str, parameters: Mapping[str, Any]) -> bytes:
    """One error reply frame, NUL included."""
    return _ENCODER.encode(_ErrorReply(name, parameters)) + b"\0"


def encode_call(
    method: str, parameters: Any = None, *, more: bool = False, oneway: bool = False
) -> bytes:
    """One call frame, NUL included; `parameters` is a mapping, a Struct or None."""
    return _ENCODER.encode(_Call(method, parameters, more, oneway)) + b"\0"


_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]*)`")


def invalid_parameter(exc: msgspec.ValidationError) -> tuple[str, str]:
    """From a msgspec validation error: the parameter InvalidParameter names (the field by its
    path, e.g. `limit`, `items[2].name`) and what was wrong with it (for the log)."""
    text = str(exc)
    at = _AT.search(text)
    path = at.group(1) if at else ""
    field = _FIELD.search(text)
    if field:
        path = f"{path}.{field.group(1)}" if path else field.group(1)
    problem = _AT.sub("", text)
    return path or "parameters", problem
