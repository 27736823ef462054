"""Peer authorization: who may call what, decided from the socket's SO_PEERCRED.

- A peer whose uid is in `[auth] allow_uids` (default: the daemon's own uid and root) or whose
  gid is in `allow_gids` may call every method.
- A peer whose gid is in `read_only_gids` may call only the reading methods, `READ_ONLY_METHODS`
  below (a closed list: a method added later is writable-only until it is listed here, and a
  test fails until every declared method is classified as reading or writing).
- `org.varlink.service` (GetInfo, GetInterfaceDescription) is open to both.
- Anyone else gets `io.timelined.PermissionDenied`, and the server closes the connection.

"The peer's groups" are its primary gid (SO_PEERCRED) and its supplementary groups
(SO_PEERGROUPS), both as the kernel recorded them at connect time: race-free, unlike reading
/proc/<pid>/status later (the pid can be reused, and the shipped unit's `ProtectProc=invisible`
hides other users' processes). So adding a user to the socket's group (`usermod -aG`) is enough
once they log in again. Full access wins over read-only when a peer is in both kinds of group.

The config is read at every call: a reload that changes `[auth]` applies to the next call,
including on connections that are already open.
"""

from __future__ import annotations

from timelined.api import ADMIN_NAME, INTERFACES, TIMELINE_NAME
from timelined.config import AuthConfig
from timelined.daemon.app import App
from timelined.errors import PermissionDenied
from timelined.varlink import Authorizer, PeerCredentials

__all__ = ["OPEN_INTERFACES", "READ_ONLY_METHODS", "WRITE_METHODS", "authorizer"]

OPEN_INTERFACES = frozenset({"org.varlink.service"})

READ_ONLY_METHODS = frozenset(
    {
        f"{TIMELINE_NAME}.ListConversations",
        f"{TIMELINE_NAME}.GetConversation",
        f"{TIMELINE_NAME}.GetContext",
        f"{TIMELINE_NAME}.GetTree",
        f"{TIMELINE_NAME}.GetStartupState",
        f"{TIMELINE_NAME}.GetBlock",
        f"{TIMELINE_NAME}.ListBlocks",
        f"{TIMELINE_NAME}.GetHistory",
        f"{TIMELINE_NAME}.SearchBlocks",
        f"{TIMELINE_NAME}.GetConversationStats",
        f"{TIMELINE_NAME}.Watch",
        f"{TIMELINE_NAME}.ExportConversation",
        f"{ADMIN_NAME}.GetStatus",
        f"{ADMIN_NAME}.ReadLog",
        f"{ADMIN_NAME}.GetRecoveryReport",
        f"{ADMIN_NAME}.ListReports",
        f"{ADMIN_NAME}.GetVerifyReport",
        f"{ADMIN_NAME}.GetMetrics",
    }
)
"""Methods that change nothing and start no work: what `read_only_gids` may call."""

WRITE_METHODS = frozenset(
    {
        f"{TIMELINE_NAME}.CreateConversation",
        f"{TIMELINE_NAME}.UpdateConversation",
        f"{TIMELINE_NAME}.ArchiveConversation",
        f"{TIMELINE_NAME}.SpawnSidebar",
        f"{TIMELINE_NAME}.PauseContext",
        f"{TIMELINE_NAME}.ResumeContext",
        f"{TIMELINE_NAME}.MergeContext",
        f"{TIMELINE_NAME}.ArchiveContext",
        f"{TIMELINE_NAME}.RestoreContext",
        f"{TIMELINE_NAME}.ReparentContext",
        f"{TIMELINE_NAME}.Focus",
        f"{TIMELINE_NAME}.AppendBlock",
        f"{TIMELINE_NAME}.SetTags",
        f"{TIMELINE_NAME}.AddCrossRef",
        f"{TIMELINE_NAME}.RevokeCrossRef",
        f"{TIMELINE_NAME}.ImportConversation",
        f"{ADMIN_NAME}.Verify",
        f"{ADMIN_NAME}.Repair",
        f"{ADMIN_NAME}.Reload",
    }
)
"""Methods that change state or start work (a verification run): full access only."""

_DECLARED = frozenset(f"{i.name}.{m.name}" for i in INTERFACES for m in i.methods)


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
            if full not in _DECLARED:
                return  # no such method: the server answers MethodNotFound / InterfaceNotFound
            raise PermissionDenied(
                peer.uid, peer.gid, full, "read-only access (read_only_gids) cannot call it"
            )
        raise PermissionDenied(
            peer.uid, peer.gid, full, "neither the uid nor any of its groups is allowed by [auth]"
        )

    return authorize
