"""Peer authorization: who may call what, decided from the socket's SO_PEERCRED.

- A peer whose uid is in `[auth] allow_uids` (default: the daemon's own uid and root) or whose
  gid is in `allow_gids` may call every method.
- A peer whose gid is in `read_only_gids` may call only the reading methods, `READ_ONLY_METHODS`
  below: those `timelined.api.methods` declares with access `read` (every method is declared
  with its access class, so none is left unclassified).
- `org.varlink.service` (GetInfo, GetInterfaceDescription) is open to both.
- Anyone else gets `PermissionDenied` (`io.timelined.Timeline.PermissionDenied`, or
  `io.timelined.Admin.PermissionDenied` on an Admin call), and the server closes the connection.

Admission (`admitter`), once per connection before it takes a slot: a peer allowed nothing is
refused there and then (PermissionDenied, method `(any method)`), so that it never holds one of
`max_connections`; the others are counted in the class `full` or `read_only`. Full-access peers
are privileged: they may take the `[limits] reserved_for_writers` slots that read-only peers
never get (timelined/varlink/admission.py applies the numbers).

"The peer's groups" are its primary gid (SO_PEERCRED) and its supplementary groups
(SO_PEERGROUPS), both as the kernel recorded them at connect time: race-free, unlike reading
/proc/<pid>/status later (the pid can be reused, and the shipped unit's `ProtectProc=invisible`
hides other users' processes). So adding a user to the socket's group (`usermod -aG`) is enough
once they log in again. Full access wins over read-only when a peer is in both kinds of group.

The config is read at every call and every connect: a reload that changes `[auth]` applies to
the next call, including on connections that are already open, and to the next connection.
"""

from __future__ import annotations

from timelined.api import ACCESS
from timelined.config import AuthConfig
from timelined.daemon.app import App
from timelined.errors import PermissionDenied
from timelined.varlink.admission import Admission
from timelined.varlink.server import Admitter, Authorizer, PeerCredentials

__all__ = [
    "FULL",
    "OPEN_INTERFACES",
    "READ_ONLY",
    "READ_ONLY_METHODS",
    "WRITE_METHODS",
    "admitter",
    "authorizer",
]

OPEN_INTERFACES = frozenset({"org.varlink.service"})

READ_ONLY_METHODS = frozenset(name for name, access in ACCESS.items() if access == "read")
"""Methods that change nothing and start no work: what `read_only_gids` may call."""

WRITE_METHODS = frozenset(ACCESS) - READ_ONLY_METHODS
"""Methods that change state (access `write`) or act on the daemon (`admin`): full access only."""


FULL = Admission("full", privileged=True)
READ_ONLY = Admission("read_only")
_ANY_METHOD = "(any method)"
_NOBODY = "neither the uid nor any of its groups is allowed by [auth]"


class _Grants:
    """The sets of one AuthConfig, computed once per config object (a reload makes a new one)."""

    __slots__ = ("allow_gids", "allow_uids", "auth", "read_only_gids")

    def __init__(self, auth: AuthConfig) -> None:
        self.auth = auth
        self.allow_uids = auth.effective_allow_uids()
        self.allow_gids = frozenset(auth.allow_gids)
        self.read_only_gids = frozenset(auth.read_only_gids)

    def admission(self, peer: PeerCredentials) -> Admission | None:
        """The peer's class; None: it may call nothing."""
        if peer.uid in self.allow_uids or _in(peer, self.allow_gids):
            return FULL
        if _in(peer, self.read_only_gids):
            return READ_ONLY
        return None


class _Current:
    """The grants of the app's current `[auth]`, rebuilt when a reload replaced it."""

    __slots__ = ("app", "grants")

    def __init__(self, app: App) -> None:
        self.app = app
        self.grants = _Grants(app.config.auth)

    def __call__(self) -> _Grants:
        auth = self.app.config.auth
        if auth is not self.grants.auth:
            self.grants = _Grants(auth)
        return self.grants


def _in(peer: PeerCredentials, gids: frozenset[int]) -> bool:
    return peer.gid in gids or not gids.isdisjoint(peer.groups)


def authorizer(app: App) -> Authorizer:
    """The server's authorization hook for `app` (its config read at every call)."""
    current = _Current(app)

    def authorize(peer: PeerCredentials, interface: str, method: str) -> None:
        # Run before every call: the common peer (an allowed uid) is let through here, without
        # a call into `_Current` or `_Grants` (each a Python frame per call).
        grants = current.grants
        if app.config.auth is not grants.auth:
            grants = current()
        if peer.uid in grants.allow_uids:
            return
        admission = grants.admission(peer)
        if admission is FULL:
            return
        full = f"{interface}.{method}"
        if admission is READ_ONLY:
            if interface in OPEN_INTERFACES or full in READ_ONLY_METHODS:
                return
            if full not in ACCESS:
                return  # no such method: the server answers MethodNotFound / InterfaceNotFound
            raise PermissionDenied(
                peer.uid, peer.gid, full, "read-only access (read_only_gids) cannot call it"
            )
        raise PermissionDenied(peer.uid, peer.gid, full, _NOBODY)

    return authorize


def admitter(app: App) -> Admitter:
    """The server's admission hook for `app`: a peer `[auth]` allows nothing is refused at
    connect; the others are counted as `full` (privileged) or `read_only`."""
    current = _Current(app)

    def admit(peer: PeerCredentials) -> Admission:
        admission = current().admission(peer)
        if admission is None:
            raise PermissionDenied(peer.uid, peer.gid, _ANY_METHOD, _NOBODY)
        return admission

    return admit
