"""The checkpoint signing key and the kept checkpoints, in the state directory.

STATE_DIR/keys/checkpoint.key: the signer key string (Go sumdb note format), 0600, created at
the first boot; keys/checkpoint.pub: its verifier key, for operators. STATE_DIR/checkpoints/:
one signed note per tree size signed, `<size, 20 digits>.note`, the oldest removed past `keep`.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from timelined.auditlog.atomic import make_dirs, write_file_atomic
from timelined.errors import ConfigError
from timelined.transparency.note import NoteError, Signer

log = logging.getLogger(__name__)
KEY_FILE = "checkpoint.key"
PUB_FILE = "checkpoint.pub"


def default_origin() -> str:
    return f"timelined/{socket.gethostname()}"


def load_or_create_key(keys_dir: Path, origin: str) -> Signer:
    """The signing key, created (0600) on first use with `origin` as its name."""
    path = keys_dir / KEY_FILE
    try:
        signer = Signer.read(path)
    except FileNotFoundError:
        make_dirs(keys_dir)
        keys_dir.chmod(0o700)
        signer = Signer.generate(origin or default_origin())
        write_file_atomic(path, str(signer).encode() + b"\n", mode=0o600, exact_mode=True)
        write_file_atomic(keys_dir / PUB_FILE, str(signer.verifier()).encode() + b"\n", mode=0o644)
        log.info("created the checkpoint key %s", signer.verifier())
        return signer
    except NoteError as exc:  # not a key (not ASCII text included): only the signing stops
        raise ConfigError("checkpoint", f"{path}: {exc}") from None
    if origin and origin != signer.name:
        log.warning(
            "[checkpoint] origin is %r but the key in %s is named %r: the key's name is kept",
            origin,
            path,
            signer.name,
        )
    return signer


def checkpoint_path(directory: Path, size: int) -> Path:
    return directory / f"{size:020d}.note"


def store_checkpoint(directory: Path, size: int, note: str, keep: int) -> None:
    """Keep a signed checkpoint (crash-safe) and remove the oldest beyond `keep`."""
    make_dirs(directory)
    write_file_atomic(checkpoint_path(directory, size), note.encode())
    kept = sorted(p for p in directory.glob("*.note") if p.stem.isdigit())
    for old in kept[: max(0, len(kept) - keep)]:
        old.unlink(missing_ok=True)


def latest_checkpoint(directory: Path) -> str | None:
    kept = sorted(p for p in directory.glob("*.note") if p.stem.isdigit())
    return kept[-1].read_text(encoding="utf-8") if kept else None
