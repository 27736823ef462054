"""config.toml → frozen, validated settings; every key is documented in the shipped config.toml.

Lookup order for the file: `--config PATH`, else `$TIMELINED_CONFIG`, else
`$CONFIGURATION_DIRECTORY/config.toml`, else `./config.toml`; with none of them, the defaults.
Relative paths in the file are resolved against the file's directory, so that the shipped
config.toml keeps its state in `./var` wherever the daemon is started from.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from timelined import conninfo
from timelined.errors import ConfigError

FsyncMode = Literal["always", "interval", "off"]
DriftAction = Literal["report", "repair"]
LogLevel = Literal["debug", "info", "warning", "error"]
StoreBackend = Literal["sqlite", "postgresql"]

_MiB = 1024 * 1024


class DaemonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state_dir: str = ""  # "" → $STATE_DIRECTORY, else ./var
    socket_path: str = ""  # "" → $RUNTIME_DIRECTORY/timelined.sock, else STATE_DIR/timelined.sock
    socket_mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    log_level: LogLevel = "info"
    # "" → the state directory is 0700 and its files 0600; a group (name or gid) → 0750/0640
    # with that group, for auditors who read the log offline (recovery/boot.py).
    state_group: str = ""

    @property
    def socket_mode_int(self) -> int:
        return int(self.socket_mode, 8)


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fsync: FsyncMode = "always"
    fsync_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 50
    segment_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 64 * _MiB
    # Space reserved ahead of the last segment's end (posix_fallocate), so that a batch's sync
    # does not also write the inode for a new size; 0 appends as before (docs/operations.md).
    # At most 16 MiB: chunks past 4 MiB save nothing measurable (one fallocate per chunk) and
    # hold that much more disk per daemon; a boot after a crash reads the released space a
    # chunk at a time (auditlog/scan.py), so its memory does not grow with it.
    reserve_bytes: Annotated[int, msgspec.Meta(ge=0, le=16 * _MiB)] = 4 * _MiB
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 512


class VerifyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    on_boot: bool = True
    interval_s: Annotated[int, msgspec.Meta(ge=0)] = 3600  # 0 disables the periodic run
    on_drift: DriftAction = "report"


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * _MiB)] = 16 * _MiB
    max_block_bytes: Annotated[int, msgspec.Meta(ge=64, le=1024 * _MiB)] = 4 * _MiB
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    idle_timeout_s: Annotated[int, msgspec.Meta(ge=0)] = 600  # 0 keeps idle connections forever
    # Per connection: a watcher's queue of committed events not yet sent (beyond it, the
    # watcher ends with SlowConsumer). Other per-connection buffers hold one frame each.
    max_connection_buffer_bytes: Annotated[int, msgspec.Meta(ge=64 * 1024)] = 64 * _MiB
    # The whole daemon: stream replies on their way out, large incoming frames and every
    # watcher's queue together. Past it streams wait, new large buffers are refused.
    max_buffered_bytes: Annotated[int, msgspec.Meta(ge=_MiB)] = 512 * _MiB

    # Connection fairness (docs/operations.md, "Connection slots"). None → a quarter of
    # max_connections: no uid may hold more at once.
    max_connections_per_uid: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    # Of max_buffered_bytes, what one uid's connections may hold together (partial frames,
    # replies waiting for it to read, its watchers' queues: a watcher past it ends with
    # SlowConsumer). None → a quarter of max_buffered_bytes, and at least max_message_bytes (one
    # frame must fit).
    max_buffered_bytes_per_uid: Annotated[int, msgspec.Meta(ge=_MiB)] | None = None
    # What one context's live cross-references (from it and to it) may take of a GetContext
    # reply, in bytes as the reply encodes them; an AddCrossRef past it is refused with
    # LimitExceeded, so that every context can still be read. None → max_message_bytes / 8.
    max_crossref_bytes_per_context: Annotated[int, msgspec.Meta(ge=1024)] | None = None
    # Slots only full-access peers (writers, admins) may take. None → max_connections / 16.
    reserved_for_writers: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    # The idle timeout of a connection that has not sent a whole call yet (0: idle_timeout_s).
    idle_timeout_new_s: Annotated[int, msgspec.Meta(ge=0)] = 5

    def __post_init__(self) -> None:
        if self.max_buffered_bytes < self.max_message_bytes:
            raise ValueError(
                "max_buffered_bytes must be at least max_message_bytes (one frame must fit)"
            )
        if self.max_connection_buffer_bytes > self.max_buffered_bytes:
            raise ValueError("max_connection_buffer_bytes must not exceed max_buffered_bytes")
        crossrefs = self.max_crossref_bytes_per_context
        if crossrefs is not None and crossrefs > self.max_message_bytes:
            raise ValueError(
                "max_crossref_bytes_per_context must be at most max_message_bytes (a context's "
                "cross-references must fit in its GetContext reply)"
            )
        share = self.max_buffered_bytes_per_uid
        if share is not None and not self.max_message_bytes <= share <= self.max_buffered_bytes:
            raise ValueError(
                "max_buffered_bytes_per_uid must be at least max_message_bytes (one frame must "
                "fit) and at most max_buffered_bytes"
            )

    def effective_crossref_bytes(self) -> int:
        if self.max_crossref_bytes_per_context is None:
            return self.max_message_bytes // 8
        return self.max_crossref_bytes_per_context

    def effective_per_uid(self) -> int:
        if self.max_connections_per_uid is None:
            return max(1, self.max_connections // 4)
        return self.max_connections_per_uid

    def effective_buffered_per_uid(self) -> int:
        if self.max_buffered_bytes_per_uid is None:
            return max(self.max_message_bytes, self.max_buffered_bytes // 4)
        return self.max_buffered_bytes_per_uid

    def effective_reserved(self) -> int:
        if self.reserved_for_writers is None:
            return self.max_connections // 16
        return self.reserved_for_writers


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # None → the daemon's own uid and root (0); an explicit list replaces that default.
    allow_uids: list[Annotated[int, msgspec.Meta(ge=0)]] | None = None
    allow_gids: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    read_only_gids: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)

    def effective_allow_uids(self) -> frozenset[int]:
        if self.allow_uids is None:
            return frozenset({os.getuid(), 0})
        return frozenset(self.allow_uids)


class CheckpointConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Signed checkpoints of the log's Merkle tree (docs/transparency.md)."""

    # false: no tree, no key, no checkpoints; the four methods answer FeatureUnavailable.
    enabled: bool = True

    # A new checkpoint is signed every interval_s seconds when the log grew, and at every
    # clean stop.
    interval_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    # The checkpoint's origin line and the key's name; used when the key is created (first
    # boot), then the key's own name is kept. "" → "timelined/<hostname>".
    origin: Annotated[str, msgspec.Meta(pattern=r"^[!-*,-~]{0,200}$")] = ""
    # How many signed checkpoints STATE_DIR/checkpoints/ keeps (the oldest are removed).
    keep: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the log and the state live (docs/operations.md, "PostgreSQL")."""

    # "sqlite": the log as JSONL segments and the state in SQLite, in state_dir (the default).
    # "postgresql": both in one PostgreSQL database (`dsn`), shared by several daemons.
    backend: StoreBackend = "sqlite"
    # libpq connection string or URI, without a password (refused: config files are read by
    # more people than the database's secret should be).
    dsn: str = ""
    # A file holding the password (its first line), read at start; else libpq's own
    # PGPASSWORD / PGPASSFILE (~/.pgpass) apply. Resolved like the other paths.
    password_file: str = ""
    # Read-only connections each daemon keeps open for queries.
    read_pool_size: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4


class _FileConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    verify: VerifyConfig = msgspec.field(default_factory=VerifyConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)


class Config(msgspec.Struct, frozen=True):
    """The whole validated configuration, with paths resolved to absolute ones."""

    daemon: DaemonConfig
    log: LogConfig
    verify: VerifyConfig
    limits: LimitsConfig
    auth: AuthConfig
    state_dir: Path
    socket_path: Path
    source: Path | None  # the file it came from, None for pure defaults
    checkpoint: CheckpointConfig = CheckpointConfig()
    store: StoreConfig = StoreConfig()  # password_file absolute once resolved

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def marker_path(self) -> Path:
        return self.state_dir / "clean-shutdown"

    @property
    def damage_path(self) -> Path:
        return self.state_dir / "log-damaged"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    @property
    def tree_dir(self) -> Path:
        return self.state_dir / "tree"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def checkpoints_dir(self) -> Path:
        return self.state_dir / "checkpoints"

    def replace(self, **changes: Any) -> Config:
        """A copy with some top-level fields changed (tests and reload use it)."""
        return msgspec.structs.replace(self, **changes)


_AT = re.compile(r" - at `\$\.?([^`]*)`")


def _key_of(err: msgspec.ValidationError) -> tuple[str, str]:
    text = str(err)
    m = _AT.search(text)
    problem = _AT.sub("", text)
    key = m.group(1) if m else ""
    unknown = re.search(r"unknown field `([^`]+)`", text)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        problem = "unknown key"
    return key.replace("[", ".").replace("]", "") or "(top level)", problem


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file by DESIGN.md's lookup order, or None when none exists (defaults)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TIMELINED_CONFIG")
    if env:
        return Path(env)
    conf_dir = os.environ.get("CONFIGURATION_DIRECTORY")
    if conf_dir:
        candidate = Path(conf_dir.split(":")[0]) / "config.toml"
        if candidate.exists():
            return candidate
    local = Path("config.toml")
    return local if local.exists() else None


def parse_config(text: str, source: Path | None = None) -> Config:
    """Validate TOML text; any unknown key or bad value raises ConfigError naming the key."""
    where = str(source) if source else None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), where) from exc
    try:
        fc = msgspec.convert(raw, _FileConfig, strict=True)
    except msgspec.ValidationError as exc:
        key, problem = _key_of(exc)
        raise ConfigError(key, problem, where) from exc
    base = source.resolve().parent if source else Path.cwd()
    return _resolve(fc, base, source)


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration."""
    path = find_config_file(explicit)
    if path is None:
        return _resolve(_FileConfig(), Path.cwd(), None)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror}", str(path)) from exc
    return parse_config(text, path)


def _resolve(fc: _FileConfig, base: Path, source: Path | None) -> Config:
    if fc.daemon.state_dir:
        state_dir = base / os.path.expandvars(fc.daemon.state_dir)
    elif os.environ.get("STATE_DIRECTORY"):
        state_dir = Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    else:
        state_dir = base / "var"
    if fc.daemon.socket_path:
        socket_path = base / os.path.expandvars(fc.daemon.socket_path)
    elif os.environ.get("RUNTIME_DIRECTORY"):
        socket_path = Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "timelined.sock"
    else:
        socket_path = state_dir / "timelined.sock"
    state_dir = Path(os.path.normpath(state_dir.absolute()))
    socket_path = Path(os.path.normpath(socket_path.absolute()))
    # sun_path holds 108 bytes; say so at load time rather than as an obscure bind error.
    if len(os.fsencode(socket_path)) >= 108:
        raise ConfigError(
            "daemon.socket_path",
            f"{socket_path} is {len(os.fsencode(socket_path))} bytes; a Unix socket path must "
            "be shorter than 108",
            str(source) if source else None,
        )
    reserved = fc.limits.reserved_for_writers
    if reserved is not None and reserved >= fc.limits.max_connections:
        raise ConfigError(
            "limits.reserved_for_writers",
            f"{reserved} leaves no slot of max_connections ({fc.limits.max_connections}) to "
            "read-only peers; it must be smaller",
            str(source) if source else None,
        )
    store = _resolve_store(fc.store, base, str(source) if source else None)
    return Config(
        daemon=fc.daemon,
        log=fc.log,
        verify=fc.verify,
        limits=fc.limits,
        auth=fc.auth,
        state_dir=state_dir,
        socket_path=socket_path,
        source=source,
        checkpoint=fc.checkpoint,
        store=store,
    )


def _resolve_store(store: StoreConfig, base: Path, where: str | None) -> StoreConfig:
    """Check what msgspec cannot: a dsn for PostgreSQL only, and never with a password."""
    if store.backend == "sqlite":
        for key in ("dsn", "password_file"):
            if getattr(store, key):
                raise ConfigError(f"store.{key}", 'is used only with backend = "postgresql"', where)
        return store
    if not store.dsn:
        raise ConfigError("store.dsn", 'is required with backend = "postgresql"', where)
    # The messages below never quote the string: it may hold the secret they refuse.
    try:
        has_password = conninfo.has_password(store.dsn)
    except conninfo.ConninfoError as exc:
        raise ConfigError("store.dsn", f"not a libpq connection string: {exc}", where) from exc
    if has_password:
        raise ConfigError(
            "store.dsn",
            "holds a password; put it in store.password_file (or libpq's PGPASSWORD / "
            "PGPASSFILE) instead",
            where,
        )
    if store.password_file:
        path = Path(os.path.normpath(base / os.path.expandvars(store.password_file)))
        store = msgspec.structs.replace(store, password_file=str(path))
    return store


def read_password(store: StoreConfig) -> str | None:
    """The password from `store.password_file` (its first line), None without one.

    A file anyone may read is refused: the secret would not be one.
    """
    if not store.password_file:
        return None
    path = Path(store.password_file)
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o004:
                raise ConfigError(
                    "store.password_file", f"{path} is readable by everyone; chmod o-r it"
                )
            first = f.readline(64 * 1024)
    except OSError as exc:
        raise ConfigError("store.password_file", f"cannot read {path}: {exc.strerror}") from exc
    try:
        password = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError("store.password_file", f"{path} is not UTF-8 text") from exc
    if not password:
        raise ConfigError("store.password_file", f"{path}'s first line is empty")
    return password


def default_config(state_dir: Path, **sections: Any) -> Config:
    """Defaults with a given state dir and some sections replaced (tests, benchmarks, tools)."""
    fc = _FileConfig(**sections)
    fc = msgspec.structs.replace(
        fc, daemon=msgspec.structs.replace(fc.daemon, state_dir=str(state_dir))
    )
    return _resolve(fc, Path.cwd(), None)
