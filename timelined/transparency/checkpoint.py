"""C2SP tlog-checkpoint: the body of a signed note that commits to a tree.

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n[extension lines\\n]

The origin names the log (here also the signing key's name); extension lines are kept but not
interpreted.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from timelined.transparency.merkle import HASH_SIZE
from timelined.transparency.note import Note, NoteError, Signer, Verifier, open_note, sign

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines)

    def sign(self, signer: Signer) -> str:
        return sign(self.text(), signer)

    @classmethod
    def parse_text(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root hash, each on a line")
        origin, size, root, *extensions = lines[:-1]
        if not origin or _SIZE.fullmatch(size) is None:
            raise NoteError("malformed checkpoint origin or size")
        try:
            digest = base64.b64decode(root, validate=True)
        except (binascii.Error, ValueError):
            raise NoteError("the checkpoint's root hash is not base64") from None
        if len(digest) != HASH_SIZE:
            raise NoteError("the checkpoint's root hash is not 32 bytes")
        return cls(origin, int(size), digest, tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: Note
    text: str  # the whole signed note, as received


def open_checkpoint(message: str, verifier: Verifier) -> SignedCheckpoint:
    """A checkpoint signed by `verifier`'s key, whose origin is the key's name."""
    note = open_note(message, [verifier])
    checkpoint = Checkpoint.parse_text(note.text)
    if checkpoint.origin != verifier.name:
        raise NoteError(
            f"checkpoint origin {checkpoint.origin!r} is not the key's {verifier.name!r}"
        )
    return SignedCheckpoint(checkpoint, note, message)
