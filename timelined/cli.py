"""`timelined`: serve, check-config, verify, backup, migrate (one function per verb).

Exit codes (sysexits): 0 ok; 64 a bad command line; 78 a config refused; every verb but
`serve`: 74 stdout could not be written (`> /dev/full`: one line on stderr), 141 stdout's
reader went away (`| head`: quietly, as timelinectl). `serve` as in docs/operations.md ("Exit
codes and restarts"); `verify` 0 verified, 1 a problem found, 2 could not run
(docs/operations.md, "Offline verification for auditors"; what to do: docs/recovery.md);
`backup` 66 the source is not a state directory, 73 the destination cannot be created or is not
empty, 74 the copy failed (nothing is left at the destination); `migrate` 0 migrated and
verified, 1 the source's log is damaged or the migrated database did not verify (nothing
committed), 66 the source is not a stopped daemon's state directory, 73 the target cannot be
reached or is not empty, 74 the copy failed (nothing committed), 78 a dsn with a password or
an unreadable password file (docs/operations.md, "Migrating to PostgreSQL").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from timelined import __version__
from timelined.argparsing import UsageParser, error_line, json_usage_errors
from timelined.errors import TimelinedError
from timelined.stdout import OutputFailed, run_writing, write


def _serve(args: argparse.Namespace) -> int:
    from timelined.daemon.lifecycle import serve

    return serve(args.config, args.log_level)


def _check_config(args: argparse.Namespace) -> int:
    import msgspec

    from timelined import conninfo
    from timelined.config import load_config, read_password
    from timelined.errors import ConfigError

    try:
        config = load_config(args.config)
        read_password(config.store)  # readable, not world-readable; never printed
    except ConfigError as exc:
        return _refused(exc, "config refused", os.EX_CONFIG, as_json=args.json)
    dsn = conninfo.redact(config.store.dsn) if config.store.dsn else ""
    if args.json:
        out = msgspec.to_builtins(config, enc_hook=_paths)
        out["store"]["dsn"] = dsn
        _print(msgspec.json.format(msgspec.json.encode(out)).decode())
    else:
        _print(
            f"config OK: {config.source or '(defaults)'}\n"
            f"  state_dir   {config.state_dir}\n"
            f"  socket_path {config.socket_path}\n"
            f"  log.fsync   {config.log.fsync}\n"
            f"  store       {config.store.backend}{f' {dsn}' if dsn else ''}"
        )
    return 0


# The lookup order of timelined.config.find_config_file.
_CONFIG_HELP = (
    "config.toml (default: $TIMELINED_CONFIG, else $CONFIGURATION_DIRECTORY/config.toml, else "
    "./config.toml; with none of them, every key's default). Relative paths in it are resolved "
    "against its directory"
)


def _print(text: str) -> None:
    """A line on stdout, written as timelinectl writes (timelined.stdout: exit 74 or 141)."""
    write(sys.stdout, text + "\n")


def _refused(exc: TimelinedError, what: str, code: int, *, as_json: bool) -> int:
    """Say why on stderr (with --json as the same object the daemon's errors are) and exit."""
    if as_json:
        sys.stderr.write(error_line(exc.varlink_name, exc.params))
    else:
        print(f"timelined: {what}: {exc.message}", file=sys.stderr)
    return code


def _paths(value: object) -> str:
    """For msgspec: the config's paths as strings (nothing else is foreign to JSON)."""
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _verify(args: argparse.Namespace) -> int:
    from timelined.config import load_config
    from timelined.errors import ConfigError
    from timelined.verifier.offline import run_offline, run_offline_pg

    if args.dsn is not None:
        return run_offline_pg(
            args.dsn, args.password_file, as_json=args.json, progress=sys.stderr.isatty()
        )
    state_dir = args.state_dir
    if state_dir is None:  # --config: the store the daemon of that config uses
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _refused(exc, "config refused", os.EX_CONFIG, as_json=args.json)
        store = getattr(config, "store", None)  # [store] (issue 20): a PostgreSQL store
        if store is not None and store.backend == "postgresql":
            return run_offline_pg(
                store.dsn,
                store.password_file or None,
                as_json=args.json,
                progress=sys.stderr.isatty(),
            )
        state_dir = config.state_dir
    return run_offline(Path(state_dir), as_json=args.json, progress=sys.stderr.isatty())


def _backup(args: argparse.Namespace) -> int:
    import msgspec

    from timelined.backup import backup
    from timelined.errors import BackupFailed

    def say(text: str) -> None:
        if sys.stderr.isatty() and not args.json:
            print(text, file=sys.stderr)

    try:
        result = backup(Path(args.state_dir), Path(args.to), progress=say)
    except BackupFailed as exc:
        return _refused(exc, "backup failed", _BACKUP_EXIT[exc.side], as_json=args.json)
    if args.json:
        _print(msgspec.json.encode(result).decode())
    else:
        _print(
            f"backup in {result.destination}: state at seq {result.state_last_seq}, log to seq "
            f"{result.log_last_seq} ({result.segments} segments, {result.log_bytes} bytes) in "
            f"{result.seconds:.2f}s"
        )
        for note in result.notes:
            _print(f"note: {note}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import msgspec

    from timelined.config import load_config
    from timelined.errors import ConfigError, LogDamaged, MigrationFailed
    from timelined.migrate import ProgressLine, migrate_to_pg, render
    from timelined.verifier.pgrun import pg_connector

    state_dir = args.state_dir
    try:
        if state_dir is None:
            state_dir = load_config(args.config).state_dir
        connect, target = pg_connector(args.to, args.password_file)
    except ConfigError as exc:
        return _refused(exc, "refused", os.EX_CONFIG, as_json=args.json)
    line = ProgressLine(sys.stderr, as_json=args.json)
    try:
        result = migrate_to_pg(Path(state_dir), connect, target, progress=line)
    except MigrationFailed as exc:
        line.clear()
        return _refused(exc, "migration refused", _MIGRATE_EXIT[exc.side], as_json=args.json)
    except LogDamaged as exc:
        line.clear()
        return _refused(exc, "nothing migrated", 1, as_json=args.json)
    line.clear()
    if args.json:
        _print(msgspec.json.encode(result).decode())
    else:
        _print(render(result))
    return 0


_MIGRATE_EXIT = {
    "source": os.EX_NOINPUT,
    "target": os.EX_CANTCREAT,
    "copy": os.EX_IOERR,
    "verify": 1,
}
_BACKUP_EXIT = {"source": os.EX_NOINPUT, "destination": os.EX_CANTCREAT, "copy": os.EX_IOERR}


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="timelined",
        description="The timelined daemon and its offline tools.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"timelined {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=UsageParser)
    p = verbs.add_parser("serve", help="run the daemon in the foreground")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=_serve)
    p = verbs.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    p.set_defaults(run=_check_config)
    p = verbs.add_parser("verify", help="verify a stopped daemon's state directory, read-only")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", help="the state directory (or a copy of one)")
    where.add_argument("--config", help="config.toml: verify the state directory it names")
    where.add_argument("--dsn", help="a PostgreSQL store (libpq conninfo or URI, no password)")
    p.add_argument("--password-file", help="with --dsn: a file holding the password")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_verify)
    p = verbs.add_parser("backup", help="copy a state directory, safely, while the daemon runs")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--to", required=True, help="a new (or empty) directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_backup)
    p = verbs.add_parser(
        "migrate", help="move a stopped daemon's state directory into an empty PostgreSQL database"
    )
    p.add_argument(
        "--from",
        dest="source",
        choices=["sqlite"],
        required=True,
        help="the source's backend: a state directory (JSONL log, SQLite state)",
    )
    p.add_argument("--to", required=True, help="the target: libpq conninfo or URI, no password")
    p.add_argument("--password-file", help="a file holding the target's password")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--state-dir", help="the state directory to migrate")
    src.add_argument("--config", help="config.toml: migrate the state directory it names")
    p.add_argument("--json", action="store_true", help="progress and result as JSON")
    p.set_defaults(run=_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parsed: list[argparse.Namespace] = []
    as_json = "--json" in words  # until the command line is parsed: for --help's failed write

    def parse() -> int:
        with json_usage_errors(words):
            parsed.append(build_parser().parse_args(words))
        return 0

    def failed(exc: OutputFailed) -> int:
        message = f"cannot write stdout: {exc}"
        if as_json:
            sys.stderr.write(
                error_line("timelined.CannotWrite", {"path": "<stdout>", "message": message})
            )
        else:
            print(f"timelined: {message}", file=sys.stderr)
        return os.EX_IOERR

    # --help writes and exits while parsing: through the same writer as every verb's output.
    code = run_writing(sys.stdout, parse, failed)
    if not parsed:
        return code
    args = parsed[0]
    if args.verb == "serve":  # the daemon writes nothing on stdout: an EPIPE there is a bug
        served: int = args.run(args)
        return served
    as_json = getattr(args, "json", False)
    return run_writing(sys.stdout, lambda: args.run(args), failed)


if __name__ == "__main__":
    sys.exit(main())
