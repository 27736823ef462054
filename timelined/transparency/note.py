"""C2SP signed notes (signed-note.md; Go's golang.org/x/mod/sumdb/note) with Ed25519 keys.

A note is UTF-8 text ending in a newline, then a blank line, then one line per signature:
`— <name> <base64(key id ‖ signature)>\\n` (an em dash, U+2014). The signature is over the text
alone (its final newline included). A key's id is the first four bytes of
SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key) (0x01: the Ed25519 algorithm byte). Key strings:
verifier `<name>+<8 hex of the id>+<base64(0x01 ‖ public key)>`, signer
`PRIVATE+KEY+<name>+<8 hex of the id>+<base64(0x01 ‖ 32-byte seed)>`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING

from timelined.errors import LocalError

# `cryptography` is imported where a key is used, not here: it is ~50 ms of the client's import
# time, and most client programs never audit a checkpoint.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ALG_ED25519 = b"\x01"
SIG_PREFIX = "\u2014 "  # "— "
MAX_SIGNATURES = 100
_NAME = re.compile(r"[^\s+]+")  # a key name: no whitespace, no "+"


class NoteError(LocalError, ValueError):
    """A malformed note or key, or a signature that does not verify."""

    name = "NoteError"


def key_id(name: str, public: bytes) -> bytes:
    return sha256(name.encode() + b"\n" + ALG_ED25519 + public).digest()[:4]


def _b64decode(text: str, *, secret: bool = False) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # A signer key's base64 is its seed: the error is shown and logged, the seed never.
        raise NoteError("the key is not base64" if secret else f"not base64: {text!r}") from None


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise NoteError(f"bad key name {name!r} (no spaces, no '+')")
    return name


def _parse_key(text: str, parts: int, *, secret: bool = False) -> tuple[str, bytes, bytes]:
    """(name, key id, key bytes without the algorithm byte) of `name+hex id+base64`."""
    pieces = text.split("+", parts - 1)
    if len(pieces) != parts:
        raise NoteError("malformed key string")
    name, hex_id, encoded = pieces[-3:]
    _check_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise NoteError("malformed key id")
    raw = _b64decode(encoded, secret=secret)
    if len(raw) != 33 or raw[:1] != ALG_ED25519:
        raise NoteError("not an Ed25519 key")
    return name, bytes.fromhex(hex_id), raw[1:]


@dataclass(frozen=True)
class Verifier:
    name: str
    id: bytes
    public: bytes

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        name, kid, public = _parse_key(vkey.strip(), 3)
        if key_id(name, public) != kid:
            raise NoteError("the key id does not match the key")
        return cls(name, kid, public)

    def __str__(self) -> str:
        encoded = base64.b64encode(ALG_ED25519 + self.public).decode()
        return f"{self.name}+{self.id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    name: str
    seed: bytes

    @classmethod
    def generate(cls, name: str) -> Signer:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(_check_name(name), seed)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Signer:
        """The signer key in the file `path` (witness-key's, the daemon's checkpoint.key).
        OSError when it cannot be read; NoteError when it is not a key, not ASCII text
        included (the message never holds the key's secret)."""
        with open(path, "rb") as handle:
            raw = handle.read()
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise NoteError(
                f"not ASCII text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
        return cls.parse(text)

    @classmethod
    def parse(cls, skey: str) -> Signer:
        if not skey.startswith("PRIVATE+KEY+"):
            raise NoteError("not a signer key")
        name, kid, seed = _parse_key(skey.strip(), 5, secret=True)
        signer = cls(name, seed)
        if signer.verifier().id != kid:
            raise NoteError("the key id does not match the key")
        return signer

    def __str__(self) -> str:
        encoded = base64.b64encode(ALG_ED25519 + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier().id.hex()}+{encoded}"

    def __repr__(self) -> str:  # never print the seed by accident
        return f"Signer({self.name!r})"

    def verifier(self) -> Verifier:
        from cryptography.hazmat.primitives import serialization

        public = (
            self._private()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return Verifier(self.name, key_id(self.name, public), public)

    def signature_line(self, text: str) -> str:
        _check_text(text)
        sig = self._private().sign(text.encode())
        encoded = base64.b64encode(self.verifier().id + sig).decode()
        return f"{SIG_PREFIX}{self.name} {encoded}\n"

    def _private(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed)


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or any(c < " " and c != "\n" for c in text):
        raise NoteError("malformed note text (it must end in a newline, with no blank line)")


def sign(text: str, signer: Signer) -> str:
    """The note: `text`, a blank line, the signer's signature line."""
    return text + "\n" + signer.signature_line(text)


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    signature: bytes
    line: str


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[Signature, ...]

    def verified_by(self, verifier: Verifier) -> bool:
        """Whether some signature line is a valid signature of this key (raises NoteError on a
        line that claims the key but does not verify: a forged or corrupted note)."""
        found = False
        for sig in self.signatures:
            if sig.name == verifier.name and sig.id == verifier.id:
                if not verifier.verify(self.text.encode(), sig.signature):
                    raise NoteError(
                        f"invalid signature for key {verifier.name}+{verifier.id.hex()}"
                    )
                found = True
        return found

    def with_signature(self, signer: Signer) -> str:
        """The note with `signer`'s signature added (a witness's cosignature), as text."""
        v = signer.verifier()
        kept = [s.line for s in self.signatures if (s.name, s.id) != (v.name, v.id)]
        return self.text + "\n" + "".join(kept) + signer.signature_line(self.text)


def parse(message: str) -> Note:
    """Split a note into its text and signature lines (none verified: see `open_note`)."""
    cut = message.rfind("\n\n")
    if cut < 0 or not message.endswith("\n"):
        raise NoteError("malformed note")
    text, block = message[: cut + 1], message[cut + 2 :]
    _check_text(text)
    lines = block.splitlines(keepends=True)
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed note (no signature, or too many)")
    sigs = []
    for line in lines:
        if not line.startswith(SIG_PREFIX) or not line.endswith("\n"):
            raise NoteError("malformed signature line")
        name, sep, encoded = line[len(SIG_PREFIX) : -1].partition(" ")
        if not sep or not _NAME.fullmatch(name):
            raise NoteError("malformed signature line")
        raw = _b64decode(encoded)
        if len(raw) < 5:
            raise NoteError("malformed signature line")
        sigs.append(Signature(name, raw[:4], raw[4:], line))
    return Note(text, tuple(sigs))


def open_note(message: str, verifiers: Iterable[Verifier]) -> Note:
    """The note, once at least one of `verifiers` signed it; NoteError otherwise."""
    note = parse(message)
    keys = list(verifiers)
    if not any([note.verified_by(v) for v in keys]):
        names = ", ".join(f"{v.name}+{v.id.hex()}" for v in keys)
        raise NoteError(f"the note carries no signature of {names}")
    return note
