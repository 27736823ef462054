"""The authorizer alone: who may call what, decided from the peer's credentials."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from timelined.config import AuthConfig, default_config
from timelined.daemon.app import App
from timelined.daemon.auth import READ_ONLY_METHODS, WRITE_METHODS, authorizer
from timelined.errors import PermissionDenied
from timelined.varlink.server import PeerCredentials


def make(tmp_path: Path, **auth: Any) -> tuple[Any, Any]:
    app = SimpleNamespace(config=default_config(tmp_path, auth=AuthConfig(**auth)))
    return app, authorizer(cast(App, app))


def peer(uid: int, gid: int, *groups: int) -> PeerCredentials:
    return PeerCredentials(uid=uid, gid=gid, pid=1234, groups=groups)


def split(name: str) -> tuple[str, str]:
    interface, _, method = name.rpartition(".")
    return interface, method


def test_defaults_allow_the_daemon_uid_and_root_only(tmp_path: Path) -> None:
    _, authorize = make(tmp_path)
    for uid in {0, os.getuid()}:
        for name in READ_ONLY_METHODS | WRITE_METHODS:
            authorize(peer(uid, 99999), *split(name))
    with pytest.raises(PermissionDenied) as denied:
        authorize(peer(12345, 12345), "org.varlink.service", "GetInfo")
    assert denied.value.params["uid"] == 12345
    assert denied.value.params["method"] == "org.varlink.service.GetInfo"


def test_allow_lists_and_read_only_groups(tmp_path: Path) -> None:
    _, authorize = make(tmp_path, allow_uids=[1000], allow_gids=[2000], read_only_gids=[3000])
    for name in READ_ONLY_METHODS | WRITE_METHODS:
        authorize(peer(1000, 1), *split(name))
        authorize(peer(1, 2000), *split(name))
    with pytest.raises(PermissionDenied):
        authorize(peer(0, 0), "io.timelined.Timeline", "GetContext")  # the list replaces root
    for name in READ_ONLY_METHODS:
        authorize(peer(7, 3000), *split(name))
    authorize(peer(7, 3000), "org.varlink.service", "GetInterfaceDescription")
    authorize(peer(7, 3000), "io.timelined.Timeline", "NoSuchMethod")  # → MethodNotFound
    for name in WRITE_METHODS:
        with pytest.raises(PermissionDenied) as denied:
            authorize(peer(7, 3000), *split(name))
        assert "read-only" in denied.value.params["reason"]
    with pytest.raises(PermissionDenied):
        authorize(peer(7, 7), "io.timelined.Timeline", "NoSuchMethod")


def test_supplementary_groups_count_like_the_primary_one(tmp_path: Path) -> None:
    _, authorize = make(tmp_path, allow_gids=[2000], read_only_gids=[3000])
    for name in READ_ONLY_METHODS | WRITE_METHODS:
        authorize(peer(7, 7, 100, 2000), *split(name))
        authorize(peer(7, 7, 3000, 2000), *split(name))  # full access wins over read-only
    for name in READ_ONLY_METHODS:
        authorize(peer(7, 7, 3000), *split(name))
    with pytest.raises(PermissionDenied) as denied:
        authorize(peer(7, 7, 3000), "io.timelined.Timeline", "AppendBlock")
    assert "read-only" in denied.value.params["reason"]
    with pytest.raises(PermissionDenied):
        authorize(peer(7, 7, 100, 101), "io.timelined.Timeline", "GetContext")


def test_a_reload_applies_to_the_next_call(tmp_path: Path) -> None:
    app, authorize = make(tmp_path, allow_uids=[1000])
    with pytest.raises(PermissionDenied):
        authorize(peer(1001, 1001), "io.timelined.Timeline", "AppendBlock")
    app.config = app.config.replace(auth=AuthConfig(allow_uids=[1000, 1001]))
    authorize(peer(1001, 1001), "io.timelined.Timeline", "AppendBlock")
    app.config = app.config.replace(auth=AuthConfig(allow_uids=[1000]))
    with pytest.raises(PermissionDenied):
        authorize(peer(1001, 1001), "io.timelined.Timeline", "AppendBlock")
