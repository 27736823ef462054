"""libpq connection strings (`[store] dsn`): parsed here so that the config can refuse a password
in them and every log line can print one redacted, without importing the PostgreSQL driver.

Both of libpq's forms are read: `key=value` pairs (a value may be single-quoted, `\\` escapes
the next character) and URIs (`postgresql://user@host:port/dbname?key=value`). The daemon hands
the string to libpq unchanged; this module only looks at it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from timelined.errors import LocalError

_URI_SCHEMES = ("postgresql://", "postgres://")
_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
REDACTED = "*****"


class ConninfoError(LocalError, ValueError):
    """The string is not a libpq connection string; the message says where."""

    name = "ConninfoError"


def is_uri(dsn: str) -> bool:
    return dsn.startswith(_URI_SCHEMES)


def parse(dsn: str) -> dict[str, str]:
    """The connection string's keywords and values (libpq's names: host, port, dbname, user,
    password, ...); raises ConninfoError for a malformed one."""
    return _parse_uri(dsn) if is_uri(dsn) else dict(_parse_pairs(dsn))


def has_password(dsn: str) -> bool:
    return "password" in parse(dsn)


def redact(dsn: str) -> str:
    """The string with any password replaced by `*****` (safe to log); a malformed one is
    replaced whole, since where its password starts cannot be known."""
    try:
        if is_uri(dsn):
            return _redact_uri(dsn)
        return " ".join(
            f"{key}={_quote(REDACTED if key == 'password' else value)}"
            for key, value in _parse_pairs(dsn)
        )
    except ConninfoError:
        return "(a malformed connection string)"


def _parse_pairs(dsn: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(dsn):
        if dsn[pos:].strip() == "":
            break
        m = _KEY.match(dsn, pos)
        if m is None:
            raise ConninfoError(f"expected key=value at character {pos + 1}")
        key, pos = m.group(1), m.end()
        value, pos = _value(dsn, pos)
        pairs.append((key, value))
    return pairs


def _value(dsn: str, pos: int) -> tuple[str, int]:
    """One value from `pos`: quoted ('...' with \\ escapes) or up to the next blank."""
    out: list[str] = []
    quoted = pos < len(dsn) and dsn[pos] == "'"
    if quoted:
        pos += 1
    while pos < len(dsn):
        ch = dsn[pos]
        if ch == "\\" and pos + 1 < len(dsn):
            out.append(dsn[pos + 1])
            pos += 2
            continue
        if quoted and ch == "'":
            return "".join(out), pos + 1
        if not quoted and ch.isspace():
            break
        out.append(ch)
        pos += 1
    if quoted:
        raise ConninfoError("a quoted value is not closed")
    return "".join(out), pos


def _quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parse_uri(dsn: str) -> dict[str, str]:
    try:
        parts = urlsplit(dsn)
        port = parts.port if "," not in parts.netloc else None  # multi-host: ports stay in host
    except ValueError as exc:
        raise ConninfoError(str(exc)) from exc
    found: dict[str, str] = {}
    if parts.username:
        found["user"] = unquote(parts.username)
    if parts.password is not None:
        found["password"] = unquote(parts.password)
    host = parts.netloc.rpartition("@")[2]
    if host:
        found["host"] = unquote(host if port is None else host.rpartition(":")[0])
    if port is not None:
        found["port"] = str(port)
    if parts.path.strip("/"):
        found["dbname"] = unquote(parts.path.lstrip("/"))
    found.update(parse_qsl(parts.query, keep_blank_values=True))
    return found


def _redact_uri(dsn: str) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    query = "&".join(
        f"{quote(key)}={quote(REDACTED if key == 'password' else value)}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


__all__ = ["REDACTED", "ConninfoError", "has_password", "is_uri", "parse", "redact"]
