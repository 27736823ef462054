"""Peer authorization: who may call what, decided from the socket's SO_PEERCRED.

- A peer whose uid is in `[auth] allow_uids` (default: the daemon's own uid and root) or whose
  gid is in `allow_gids` may call every method.
- A peer whose gid is in `read_only_gids` may call only the reading methods, `READ_ONLY_METHODS`
  below: those `timelined.api.methods` declares with access `read` (every method is declared
  with its access class, so none is left unclassified).
- `org.varlink.service` (GetInfo, GetInterfaceDescription) is open to both.
- Anyone else gets `PermissionDenied` (`io.timelined.Timeline.PermissionDenied`, or
  `io.timelined.Admin.PermissionDenied` on an Admin call), and the server closes the connection.

"The peer's groups" are its primary gid (SO_PEERCRED) and its supplementary groups
(SO_PEERGROUPS), both as the kernel recorded them at connect time: race-free, unlike reading
/proc/<pid>/status later (the pid can be reused, and the shipped unit's `ProtectProc=invisible`
hides other users' processes). So adding a user to the socket's group (`usermod -aG`) is enough
once they log in again. Full access wins over read-only when a peer is in both kinds of group.

The config is read at every call: a reload that changes `[auth]` applies to the next call,
including on connections that are already open.
"""

from __future__ import annotations

from timelined.api import ACCESS
from timelined.config import AuthConfig
from timelined.daemon.app import App
from timelined.errors import PermissionDenied
from timelined.varlink import Authorizer, PeerCredentials

__all__ = ["OPEN_INTERFACES", "READ_ONLY_METHODS", "WRITE_METHODS", "authorizer"]

OPEN_INTERFACES = frozenset({"org.varlink.service"})

READ_ONLY_METHODS = frozenset(name for name, access in ACCESS.items() if access == "read")
"""Methods that change nothing and start no work: what `read_only_gids` may call."""

WRITE_METHODS = frozenset(ACCESS) - READ_ONLY_METHODS
"""Methods that change state (access `write`) or act on the daemon (`admin`): full access only."""


class _Grants:
    """The sets of one AuthConfig, computed once per config object (a reload makes a new one)."""

    __slots__ = ("allow_gids", "allow_uids", "auth", "read_only_gids")

    def __init__(self, auth: AuthConfig) -> None:
        self.auth = auth
        self.allow_uids = auth.effective_allow_uids()
        self.allow_gids = frozenset(auth.allow_gids)
        self.read_only_gids = frozenset(auth.read_only_gids)


def _in(peer: PeerCredentials, gids: frozenset[int]) -> bool:
    return peer.gid in gids or not gids.isdisjoint(peer.groups)


def authorizer(app: App) -> Authorizer:
    """The server's authorization hook for `app` (its config read at every call)."""
    grants = _Grants(app.config.auth)

    def authorize(peer: PeerCredentials, interface: str, method: str) -> None:
        nonlocal grants
        auth = app.config.auth
        if auth is not grants.auth:
            grants = _Grants(auth)
        if peer.uid in grants.allow_uids or _in(peer, grants.allow_gids):
            return
        full = f"{interface}.{method}"
        if _in(peer, grants.read_only_gids):
            if interface in OPEN_INTERFACES or full in READ_ONLY_METHODS:
                return
            if full not in ACCESS:
                return  # no such method: the server answers MethodNotFound / InterfaceNotFound
            raise PermissionDenied(
                peer.uid, peer.gid, full, "read-only access (read_only_gids) cannot call it"
            )
        raise PermissionDenied(
            peer.uid, peer.gid, full, "neither the uid nor any of its groups is allowed by [auth]"
        )

    return authorize
