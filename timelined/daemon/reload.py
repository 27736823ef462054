"""Reloading the config while serving: SIGHUP, a change of config.toml, or Admin.Reload.

A reload applies in place what can change without a restart (`RELOADABLE` sections and
`daemon.log_level`) and names every other changed key as needing a restart. A file that does
not load changes nothing: the running config stays.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import msgspec

from timelined.api import ReloadReply
from timelined.config import Config, load_config
from timelined.daemon.app import App
from timelined.daemon.notify import Notifier, StatusText
from timelined.daemon.varlink_setup import server_limits
from timelined.errors import ConfigError
from timelined.logs import setup_logging

log = logging.getLogger("timelined.daemon")

# Sections a reload may change in place; anything else needs a restart and is reported as such.
RELOADABLE = ("limits", "auth", "verify")
_SECTIONS = ("daemon", "log", "verify", "limits", "auth", "checkpoint", "store")


def diff(old: Config, new: Config) -> ReloadReply:
    """The keys that differ: those a reload applies, and those that need a restart."""
    changed: list[str] = []
    needs_restart: list[str] = []
    for section in _SECTIONS:
        before = msgspec.to_builtins(getattr(old, section))
        after = msgspec.to_builtins(getattr(new, section))
        for key in sorted(set(before) | set(after)):
            if before.get(key) == after.get(key):
                continue
            name = f"{section}.{key}"
            if section in RELOADABLE or name == "daemon.log_level":
                changed.append(name)
            else:
                needs_restart.append(name)
    return ReloadReply(changed=changed, restart_required=needs_restart)


def reloaded(old: Config, new: Config) -> Config:
    """The running config with what a reload may change taken from `new`."""
    kept: dict[str, Any] = {
        "limits": new.limits,
        "auth": new.auth,
        "verify": new.verify,
        "daemon": msgspec.structs.replace(old.daemon, log_level=new.daemon.log_level),
    }
    return old.replace(**kept)


class Reloader:
    """Applies a reload to the running daemon's parts and tells systemd while it does."""

    def __init__(self, app: App, config_path: str | None, notifier: Notifier) -> None:
        self.app = app
        self.notifier = notifier
        self.path = app.config.source
        self._config_path = config_path

    async def reload(self) -> ReloadReply:
        """Apply what can change now; a refused file raises ConfigError and changes nothing."""
        self.notifier.reloading(StatusText.reloading())
        try:
            return self._apply()
        finally:
            self.notifier.ready(self.app.status_text())

    def _apply(self) -> ReloadReply:
        old = self.app.config
        try:
            new = load_config(self._config_path)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc.message)
            raise
        result = diff(old, new)
        config = reloaded(old, new)
        self.app.config = config
        self.app.engine.config = config
        self.app.engine.limits = config.limits
        self.app.server.limits = server_limits(config.limits)
        if "daemon.log_level" in result.changed:
            setup_logging(config.daemon.log_level)
        if result.changed:
            log.info("reloaded config: changed %s", ", ".join(result.changed))
        else:
            log.info("reloaded config: nothing changed")
        if result.restart_required:
            log.warning(
                "config keys that take effect only after a restart: %s",
                ", ".join(result.restart_required),
            )
        return result

    async def reload_quietly(self) -> None:
        """SIGHUP and file changes: a refused file is logged (by `_apply`), never fatal."""
        try:
            await self.reload()
        except ConfigError:
            pass

    async def watch_file(self, stop: anyio.Event) -> None:
        """Reload when config.toml changes (editors replace the file: watch its directory).

        Not recursively: the default layout keeps the state (./var) under the config's
        directory, and a recursive watch woke the watcher thread on every log and WAL write.
        A symlinked config.toml is seen when the link is replaced, not when its target is edited
        in another directory: SIGHUP (`systemctl reload`) covers that.
        """
        if self.path is None:
            return
        import watchfiles

        config = self.path.absolute()

        def only_config(change: watchfiles.Change, path: str) -> bool:
            # The name itself (a file replaced, or a link re-pointed elsewhere, `ln -sfn`), or
            # the same file reached another way; resolved now, not at start, as links move.
            if Path(path).absolute() == config:
                return True
            try:
                return Path(path).resolve() == config.resolve()
            except (OSError, RuntimeError):  # a dangling or looping link: not our file
                return False

        try:
            async for _ in watchfiles.awatch(
                config.parent,
                watch_filter=only_config,
                recursive=False,
                stop_event=stop,
                debounce=200,
                step=50,
                rust_timeout=500,
            ):
                log.info("config file changed: reloading")
                await self.reload_quietly()
        except Exception as exc:  # the watcher is a convenience: serving goes on without it
            log.error(
                "the config file watcher stopped (%s: %s); reload with SIGHUP "
                "(systemctl reload) from now on",
                type(exc).__name__,
                exc,
            )
