"""The daemon's life: config → boot recovery → engine → socket → READY → serve → clean stop.

Exit codes (sysexits, and what systemd does with them):

- 0: clean shutdown on SIGTERM/SIGINT; the marker was written.
- 78 (EX_CONFIG): the config was refused; `RestartPreventExitStatus=78` stops restart loops.
- 75 (EX_TEMPFAIL): another daemon holds the state directory's lock.
- 74 (EX_IOERR): an fsync failed (or the state could not commit): the daemon stops at once
  without acknowledging the batch; systemd restarts it and recovery replays the log.
- 70 (EX_SOFTWARE): the boot failed; its report is in STATE_DIR/reports.
- 71 (EX_OSERR): the socket could not be bound (path in use by another program, permissions),
  or the socket systemd passed is not a listening Unix stream socket;
  the engine was closed as at a stop and the marker written.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import SocketListener, TaskGroup

from timelined import __version__
from timelined.auditlog.source import FileLogSource, LogSource
from timelined.config import Config, load_config, read_password
from timelined.daemon.activation import ActivationError, take_listener
from timelined.daemon.app import App
from timelined.daemon.memory import limit_malloc_arenas, return_large_buffers
from timelined.daemon.notify import Notifier, StatusText, run_watchdog, watchdog_interval
from timelined.daemon.reload import Reloader
from timelined.daemon.signals import block as block_signals
from timelined.daemon.signals import receive_signals
from timelined.daemon.varlink_setup import map_error, server_limits, service_info
from timelined.errors import (
    BootFailed,
    ConfigError,
    FatalStorageError,
    LocalError,
    StateLocked,
    StorageError,
    TimelinedError,
)
from timelined.ids import utc_now
from timelined.logs import setup_logging
from timelined.recovery.boot import BootResult, boot, describe_boot
from timelined.recovery.marker import mark_clean
from timelined.treestore.service import Transparency
from timelined.varlink.server import VarlinkServer, listen_unix, listener_from_socket
from timelined.writer.engine import Engine

if TYPE_CHECKING:
    from timelined.verifier.pgrun import PgTarget

log = logging.getLogger("timelined.daemon")

EX_OK = 0
EX_SOFTWARE = 70
EX_OSERR = 71
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78

SHUTDOWN_GRACE_S = 10.0


@dataclass
class _Run:
    """What the serving phase reports back to `serve`."""

    exit_code: int = EX_OK
    clean: bool = False


def serve(config_path: str | None, log_level: str | None = None) -> int:
    """Run the daemon in the foreground until a signal; returns the exit code."""
    try:
        config = load_config(config_path)
        read_password(config.store)  # refused here, with the config's exit code, not later
    except ConfigError as exc:
        setup_logging(log_level or "info")
        log.error("configuration refused: %s", exc.message)
        return EX_CONFIG
    setup_logging(log_level or config.daemon.log_level)
    limit_malloc_arenas()
    return_large_buffers()
    notifier = Notifier.from_environ(unset=True)
    notifier.status(StatusText.booting())
    log.info("timelined %s starting; state in %s", __version__, config.state_dir)

    def progress(phase: str, done: int, total: int) -> None:
        notifier.status(StatusText.recovering(done, total))
        notifier.extend_timeout(30_000_000)  # each progress step buys 30 s more to start
        log.info("%s: %d of %d events", phase, done, total)

    # A `systemctl reload` during a long recovery must not kill it (SIGHUP's default action);
    # there is nothing to reload before serving. SIGTERM and SIGINT still end a boot.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = boot(config, progress=progress)
    except StateLocked as exc:
        log.error("%s", exc.message)
        notifier.errno(11)  # EAGAIN: the resource is busy
        return EX_TEMPFAIL
    except BootFailed as exc:
        log.error("%s", exc.message)
        notifier.errno(5)
        return EX_SOFTWARE
    log.info("%s", describe_boot(result))
    # From here on the stop and reload signals are taken by a thread of their own, never by a
    # handler whose removal would reset them to their default action (daemon/signals.py).
    block_signals(_SIGNALS)
    try:
        run = anyio.run(
            _serve_async,
            config,
            config_path,
            result,
            notifier,
            backend="asyncio",
            backend_options=_loop_options(),
        )
    except (FatalStorageError, StorageError, _SocketUnavailable, OSError, ExceptionGroup) as exc:
        run = _Run(exit_code=_failure_exit_code(exc))
    finally:
        result.lock.release()
    if run.exit_code != EX_OK:
        notifier.errno(5)
    log.info("timelined stopped (exit %d)", run.exit_code)
    return run.exit_code


def _failure_exit_code(exc: BaseException) -> int:
    """Log a failure of the serving phase in one line and give its exit code; re-raise others.

    Task groups wrap what their tasks raise; the first known cause decides.
    """
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    if isinstance(leaf, FatalStorageError):
        # Below the API (opening the engine, a commit): nothing unacknowledged was lost.
        log.critical("%s; recovery will replay the log at the next boot", leaf.message)
        return EX_IOERR
    if isinstance(leaf, StorageError):
        # The log or the state could not be opened (a file where the log's directory should
        # be, no permission): nothing was written; the message names the path.
        log.critical("cannot serve: %s", leaf.message)
        return EX_IOERR
    if isinstance(leaf, _SocketUnavailable):
        log.error("%s", leaf)
        return EX_OSERR
    if isinstance(leaf, OSError):
        log.critical("storage error while serving: %s; acknowledged writes are in the log", leaf)
        return EX_IOERR
    raise exc


class _SocketUnavailable(Exception):
    """The socket could not be bound; the message names the path and the reason."""


async def _listener(config: Config) -> tuple[SocketListener, bool]:
    """The socket from systemd (socket activation), else one we bind; True if ours."""
    try:
        passed = take_listener()
    except ActivationError as exc:  # the unit passed what cannot be served on: say so, exit 71
        raise _SocketUnavailable(f"cannot serve on the socket systemd passed: {exc}") from exc
    if passed is not None:
        log.info("serving on the socket passed by systemd")
        return await listener_from_socket(passed), False
    try:
        return await listen_unix(config.socket_path, config.daemon.socket_mode_int), True
    except OSError as exc:
        raise _SocketUnavailable(
            f"cannot listen on {config.socket_path}: {exc.strerror or exc}"
        ) from exc


# Blocked and received from the serving phase's start to the process's exit: a signal never
# takes its default action (termination) half-way through a stop or after it. (During boot,
# before, SIGHUP is ignored and SIGTERM / SIGINT end the boot, which the next boot resumes.)
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class _Signalled:
    """What the signal task acts on: the stop, and the reloader once serving."""

    stop: anyio.Event
    reload: Reloader | None = None


async def _serve_async(
    config: Config, config_path: str | None, booted: BootResult, notifier: Notifier
) -> _Run:
    """Serve, with the signals handled by one task from the engine's opening to the marker.

    A second SIGTERM or SIGINT during a stop (an operator's second Ctrl-C, a second `kill`) is
    logged and ignored: the stop finishes, the marker is written. SIGKILL abandons a stop; the
    next boot recovers.
    """
    try:
        with receive_signals(_SIGNALS) as signals:
            signalled = _Signalled(anyio.Event())
            async with anyio.create_task_group() as tg:
                tg.start_soon(_signals, signals, signalled)
                run = await _serve_with(signalled, config, config_path, booted, notifier)
                tg.cancel_scope.cancel()
            return run
    finally:
        # What is left is the process's exit: the signals stay blocked (daemon/signals.py) and
        # are ignored too, so that nothing can act on one.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


async def _serve_with(
    signalled: _Signalled,
    config: Config,
    config_path: str | None,
    booted: BootResult,
    notifier: Notifier,
) -> _Run:
    run = _Run()
    stop = signalled.stop

    engine_type = engine_class(config)
    async with engine_type.open(config, head=booted.head, read_only=booted.read_only) as engine:

        def on_fatal(exc: FatalStorageError) -> None:  # the engine calls it once, on the loop
            run.exit_code = EX_IOERR
            log.critical(
                "stopping after a fatal storage error; recovery will replay the log at boot"
            )
            stop.set()

        engine.on_fatal = on_fatal
        server = VarlinkServer(
            service_info,  # called at the first GetInfo (its package metadata: ~30 ms)
            limits=server_limits(config.limits),
            map_error=map_error,
        )
        app = App(
            config=config,
            engine=engine,
            boot=booted.report,
            server=server,
            started_at=utc_now(),
            log=log_source(config, engine),
        )
        # Before serving, so that it sees every commit: opened at the engine's head, then
        # subscribed (nothing commits in between: no client is connected yet; on PostgreSQL
        # other daemons' commits reach subscribers only from `engine.follow()` below).
        if config.checkpoint.enabled:
            try:
                app.transparency = await anyio.to_thread.run_sync(
                    Transparency.open, config, engine.last_seq, app.log
                )
            except LocalError:  # unexpected, as before it was a TimelinedError: not caught here
                raise
            except (TimelinedError, OSError) as exc:
                # A log damaged before its tail (the daemon serves read-only): serve without
                # checkpoints rather than not at all; the methods say why. (A key that cannot be
                # used is found after READY, by `load_key`: then only the signing stops.)
                log.error("serving without the Merkle tree and checkpoints: %s", exc)
            else:
                engine.subscribe(app.transparency.tree.on_commit)
                writer = engine.writer
                if writer is not None:
                    app.transparency.durable_seq = lambda: writer.durable_seq
        _register(server, app)
        engine.follow()  # every subscriber is in: other daemons' commits reach them from now on
        try:
            listener, ours = await _listener(config)
        except _SocketUnavailable as exc:
            # Nothing was served: the engine closes as at a stop and the marker is written, so
            # that the next start (once the path is fixed) is an ordinary clean one.
            log.error("%s", exc)
            run.exit_code = EX_OSERR
        else:
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve, listener)
                if booted.read_only is not None:
                    log.error("serving READ-ONLY: %s", booted.read_only.message)
                notifier.ready(app.status_text())
                log.info("serving on %s (last seq %d)", config.socket_path, engine.last_seq)
                tg.start_soon(run_watchdog, notifier, watchdog_interval())
                reloader = Reloader(app, config_path, notifier)
                app.reloader = reloader  # Admin.Reload
                signalled.reload = reloader  # SIGHUP
                tg.start_soon(reloader.watch_file, stop)
                _start_features(tg, app, notifier, stop)
                if app.transparency is not None:
                    # The key after READY: nothing is signed before (treestore/service.py).
                    tg.start_soon(app.transparency.load_key)
                    tg.start_soon(app.transparency.run_forever, stop)
                await stop.wait()
                notifier.stopping(StatusText.stopping())
                log.info("stopping: finishing calls in progress")
                await server.shutdown(SHUTDOWN_GRACE_S)
                tg.cancel_scope.cancel()
            if ours:
                # A socket systemd passed in is systemd's to remove; ours we clean up.
                await anyio.Path(config.socket_path).unlink(missing_ok=True)
        # Leaving Engine.open drains the queue, fsyncs the log and checkpoints the WAL.
    if app.transparency is not None:
        _sign_at_stop(app.transparency, engine)
    # A fatal storage error (the only other non-zero exit here) leaves engine.fatal set, which
    # _mark_clean refuses: no flag needed to tell it from the unbound socket.
    return _mark_clean(config, engine, run)


def engine_class(config: Config) -> type[Engine]:
    """The engine of the configured backend (the PostgreSQL one imports its driver)."""
    if config.store.backend == "postgresql":
        from timelined.writer.pg import PgEngine

        return PgEngine
    return Engine


def log_source(config: Config, engine: Engine) -> LogSource:
    """Where ReadLog, Watch, exports and the tree's catch-up read the log: the segment files,
    or the log table through the engine's read pool (a connection lent per batch)."""
    if config.store.backend == "postgresql":
        from timelined.pgstore.logsource import BATCH_BYTES, TableLogSource
        from timelined.pgstore.reads import PgReaders

        # A paused reader (a watcher catching up that does not read) holds its current batch:
        # at most one frame's worth, as every other per-connection buffer (config.toml).
        batch_bytes = min(BATCH_BYTES, config.limits.max_message_bytes)
        return TableLogSource(cast(PgReaders, engine.readers).lend, batch_bytes=batch_bytes)
    return FileLogSource(config.log_dir)


def _sign_at_stop(transparency: Transparency, engine: Engine) -> None:
    """The last checkpoint, once every commit is in the tree (not after a fatal error or while
    read-only: the next boot checks the log first)."""
    if engine.fatal is None and engine.read_only is None:
        try:
            transparency.close()
        except OSError as exc:
            log.error("could not sign the checkpoint at stop: %s", exc)
    else:
        transparency.tree.close()


def _mark_clean(config: Config, engine: Engine, run: _Run) -> _Run:
    """Write the clean-shutdown marker once the engine is closed (run's exit code stays, but
    a marker that cannot be written makes it 74: the operator must see that first).

    No marker from a read-only daemon (damage found at boot or by the verifier since) or after a
    fatal storage error: the next boot takes the checking path; the verifier's record
    (recovery/damage.py) makes it walk the whole chain.
    """
    if engine.fatal is None and engine.read_only is None:
        writer = engine.writer
        # On PostgreSQL (no log writer) the marker only tells the next boot's report that this
        # run stopped cleanly: the database committed everything, there is nothing to check.
        head: tuple[int, str, str | None, int] = (engine.last_seq, engine.last_hash, None, 0)
        if writer is not None:
            stats = writer.stats()
            head = (stats.head_seq, stats.head_hash, stats.segment, stats.segment_size)
        try:
            mark_clean(config.marker_path, *head)
        except OSError as exc:
            # Everything is on disk; without the marker the next boot only takes the slower,
            # checking path. Exit non-zero so the operator sees why.
            log.error(
                "stopped with everything fsynced, but the clean-shutdown marker %s could not be "
                "written (%s): the next boot will recover and verify",
                config.marker_path,
                exc.strerror or exc,
            )
            run.exit_code = EX_IOERR
            return run
        log.info("clean shutdown at seq %d; marker written", head[0])
        run.clean = True
    return run


def _register(server: VarlinkServer, app: App) -> None:
    from timelined.daemon.auth import admitter, authorizer
    from timelined.daemon.methods import register_all

    register_all(server, app)
    server.authorize = authorizer(app)
    server.admit = admitter(app)


def _start_features(tg: TaskGroup, app: App, notifier: Notifier, stopping: anyio.Event) -> None:
    """Background parts that grow with the features: the verifier, watch hub, metrics."""
    try:
        from timelined.verifier import Verifier
    except ImportError:
        return

    def publish(text: str) -> None:
        notifier.status(text)

    store = app.config.store
    pg: PgTarget | None = None
    if store.backend == "postgresql":
        # Its runs and repairs on connections of their own (verifier/pgrun.py, pgrepair.py).
        from timelined.verifier.pgrun import PgTarget

        pg = PgTarget(store.dsn, read_password(store))
    verifier = Verifier(app.config, app.engine, publish, tree=app.transparency, pg=pg)
    app.verifier = verifier
    tg.start_soon(verifier.run_forever, stopping)


def _loop_options() -> dict[str, Any]:
    """uvloop when it imports (a dependency on Linux): ~10 % more appends/s at 64 connections,
    the event loop's share of the daemon's CPU being the socket work (docs/performance.md)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        log.info("uvloop is not importable: the event loop is plain asyncio")
        return {}
    return {"use_uvloop": True}


async def _signals(signals: AsyncIterator[int], signalled: _Signalled) -> None:
    stop = signalled.stop
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if stop.is_set():
                log.info("received SIGHUP while stopping: no reload")
            elif signalled.reload is None:
                log.info("received SIGHUP before serving: no reload (the config was just read)")
            else:
                log.info("received SIGHUP: reloading the config")
                await signalled.reload.reload_quietly()
        elif stop.is_set():
            log.info("received %s again: already stopping (SIGKILL abandons the stop)", name)
        else:
            log.info("received %s", name)
            stop.set()


def main_serve(argv_config: str | None, log_level: str | None) -> None:
    sys.exit(serve(argv_config, log_level))
