"""systemd socket activation (sd_listen_fds(3)) without a library.

systemd (or `systemd-socket-activate`) passes listening sockets as fds 3, 4, … and says so in
`LISTEN_PID` (must be us), `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (colon-separated names,
from the socket unit's `FileDescriptorName=`). The daemon serves on the passed Unix stream socket
when there is one and binds its own otherwise.

A passed socket belongs to the socket unit: the daemon must neither unlink its path nor chmod
it on shutdown, since systemd keeps listening on it while the service is stopped.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import MutableMapping, Sequence
from typing import NamedTuple

from timelined.errors import LocalError

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
# FileDescriptorName= values the daemon looks for first, in this order (timelined.socket ships
# "varlink"); without a match it takes the first Unix stream listening socket.
LISTENER_NAMES: tuple[str, ...] = ("timelined", "varlink")
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(LocalError, RuntimeError):
    """The activation environment is inconsistent, or no passed socket can be served on."""

    name = "ActivationError"


class ListenSocket(NamedTuple):
    name: str  # from LISTEN_FDNAMES; "unknown" without it, as sd_listen_fds_with_names says
    sock: socket.socket


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[ListenSocket]:
    """The sockets systemd passed to this process, in fd order; [] when none were.

    Each fd gets FD_CLOEXEC. With `unset_environment` (the default) the three variables are
    removed whatever their content, so that no child process believes the fds are its own.
    Raises ActivationError when the variables are malformed or name fds that are not open.
    """
    env = os.environ if environ is None else environ
    try:
        return _listen_fds(env)
    finally:
        if unset_environment:
            for key in _ENV:
                env.pop(key, None)


def _listen_fds(env: MutableMapping[str, str]) -> list[ListenSocket]:
    pid_text = env.get("LISTEN_PID")
    count_text = env.get("LISTEN_FDS")
    if not pid_text or count_text is None:
        return []
    try:
        pid = int(pid_text)
    except ValueError:
        raise ActivationError(f"LISTEN_PID={pid_text!r} is not a process id") from None
    if pid != os.getpid():
        # Inherited from a parent that was activated: the fds are not ours to touch.
        log.debug("LISTEN_PID=%d is not this process (%d); ignoring", pid, os.getpid())
        return []
    try:
        count = int(count_text)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={count_text!r} is not a number") from None
    if count < 0:
        raise ActivationError(f"LISTEN_FDS={count} is negative")
    names_text = env.get("LISTEN_FDNAMES")
    if names_text is None:
        names = ["unknown"] * count
    else:
        names = names_text.split(":") if count else []
        if len(names) != count:
            raise ActivationError(
                f"LISTEN_FDNAMES names {len(names)} fds but LISTEN_FDS={count}: {names_text!r}"
            )
    result: list[ListenSocket] = []
    for fd, name in zip(
        range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count), names, strict=True
    ):
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise ActivationError(f"LISTEN_FDS names fd {fd} ({name}): {exc.strerror}") from exc
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            if exc.errno != errno.ENOTSOCK:
                raise ActivationError(f"fd {fd} ({name}): {exc.strerror}") from exc
            # A FIFO or special file (ListenFIFO= and friends): nothing we can serve on.
            log.warning("passed fd %d (%s) is not a socket; ignoring it", fd, name)
            continue
        result.append(ListenSocket(name, sock))
    return result


def _is_unix_stream_listener(sock: socket.socket) -> bool:
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def pick_listener(
    sockets: Sequence[ListenSocket], names: Sequence[str] = LISTENER_NAMES
) -> ListenSocket | None:
    """The socket to serve on: the first of `names` present, else the first Unix stream listener.

    None when nothing was passed. Raises ActivationError when sockets were passed but none can
    serve (a socket unit with ListenDatagram= or a TCP port is a configuration error, not a
    reason to bind somewhere else silently).
    """
    if not sockets:
        return None
    for wanted in names:
        for item in sockets:
            if item.name == wanted:
                if not _is_unix_stream_listener(item.sock):
                    raise ActivationError(
                        f"the passed socket named {wanted!r} is not a listening Unix stream "
                        f"socket (family {item.sock.family.name}, type {item.sock.type.name})"
                    )
                return item
    for item in sockets:
        if _is_unix_stream_listener(item.sock):
            return item
    described = ", ".join(f"{i.name}: {i.sock.family.name}/{i.sock.type.name}" for i in sockets)
    raise ActivationError(f"no passed socket is a listening Unix stream socket ({described})")


def take_listener(
    environ: MutableMapping[str, str] | None = None, names: Sequence[str] = LISTENER_NAMES
) -> socket.socket | None:
    """The passed listening socket to serve on, or None to bind our own; other fds are closed."""
    sockets = listen_fds(environ)
    try:
        chosen = pick_listener(sockets, names)
    except ActivationError:
        for item in sockets:
            item.sock.close()
        raise
    for item in sockets:
        if chosen is None or item.sock is not chosen.sock:
            item.sock.close()
    if chosen is not None:
        log.info(
            "serving on the socket passed by systemd (%s, fd %d)", chosen.name, chosen.sock.fileno()
        )
        return chosen.sock
    return None


def socket_path(sock: socket.socket) -> str | None:
    """The filesystem path a Unix socket is bound to, None for abstract or unnamed ones."""
    name = sock.getsockname()
    if isinstance(name, str) and name.startswith("/"):
        return name
    return None
