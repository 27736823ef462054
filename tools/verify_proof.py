#!/usr/bin/env python3
"""Check a timelined proof against a signed checkpoint, for an auditor: the standard library and
`cryptography` (Ed25519) only, no timelined. docs/transparency.md says what is hashed and signed.

    verify_proof.py inclusion --key KEY --checkpoint CP.note --proof PROOF.json
        PROOF.json: `timelinectl --json prove SEQ` (uses leaf_index, tree_size, hashes, line)
    verify_proof.py consistency --key KEY --old OLD.note --checkpoint NEW.note --proof P.json
        P.json: `timelinectl --json consistency-proof OLD NEW` (uses hashes)

KEY is the note verifier key (`timelinectl checkpoint-key`) or a file holding it. Exit 0 and
"verified" when the signature(s) and the proof verify; exit 1 and the reason otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Failed(Exception):
    pass


def h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def open_checkpoint(note: str, vkey: str) -> tuple[int, bytes]:
    """(tree size, root) of a checkpoint signed by the key `vkey` (C2SP signed-note)."""
    name, key_id, encoded = vkey.strip().split("+", 2)
    raw = base64.b64decode(encoded, validate=True)
    if raw[:1] != b"\x01" or len(raw) != 33 or h(name.encode(), b"\n", raw)[:4].hex() != key_id:
        raise Failed("the verifier key is malformed")
    text, sep, sigs = note.rpartition("\n\n")
    text += "\n"
    ok = False
    for line in sigs.splitlines():
        sig_name, _, sig = line.removeprefix("\u2014 ").partition(" ")
        blob = base64.b64decode(sig, validate=True)
        if sig_name == name and blob[:4].hex() == key_id:
            try:
                Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[4:], text.encode())
            except InvalidSignature:
                raise Failed("the checkpoint's signature does not verify") from None
            ok = True
    if not sep or not ok:
        raise Failed(f"the checkpoint carries no signature of {name}+{key_id}")
    origin, size, root = text.split("\n")[:3]
    if origin != name:
        raise Failed(f"the checkpoint's origin {origin!r} is not the key's name {name!r}")
    return int(size), base64.b64decode(root, validate=True)


def fold(
    fn: int, sn: int, seed: bytes, path: list[bytes], also: bytes | None
) -> tuple[bytes, bytes]:
    """RFC 9162 2.1.3.2 / 2.1.4.2: walk `path` up from node fn of the last-leaf index sn."""
    r, s = seed, seed if also is None else also
    for p in path:
        if sn == 0:
            raise Failed("the proof is too long")
        if fn & 1 or fn == sn:
            r, s = h(b"\x01", p, r), h(b"\x01", p, s)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            s = h(b"\x01", s, p)
            if also is None:
                r = s
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise Failed("the proof is too short")
    return r, s


def inclusion(size: int, root: bytes, proof: dict[str, object]) -> None:
    index, tree_size = int(str(proof["leaf_index"])), int(str(proof["tree_size"]))
    if tree_size != size or not 0 <= index < size:
        raise Failed(f"the proof is for tree size {tree_size}, the checkpoint's is {size}")
    leaf = h(b"\x00", str(proof["line"]).encode())
    path = [base64.b64decode(x, validate=True) for x in proof["hashes"]]  # type: ignore[attr-defined]
    if fold(index, size - 1, leaf, path, None)[1] != root:
        raise Failed(f"event {index + 1} is not in the checkpoint's tree")


def consistency(old: tuple[int, bytes], new: tuple[int, bytes], proof: dict[str, object]) -> None:
    (m, old_root), (n, new_root) = old, new
    path = [base64.b64decode(x, validate=True) for x in proof["hashes"]]  # type: ignore[attr-defined]
    if not 0 < m <= n or (m == n and (path or old_root != new_root)):
        raise Failed(f"tree size {n} does not extend tree size {m}")
    if m == n:
        return
    if m & (m - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise Failed("empty consistency proof")
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr, sr = fold(fn, sn, path[0], path[1:], path[0])
    if (fr, sr) != (old_root, new_root):
        raise Failed(f"tree size {n} does not extend tree size {m}: the history differs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["inclusion", "consistency"])
    p.add_argument("--key", required=True, help="note verifier key, or a file holding it")
    p.add_argument("--checkpoint", required=True, type=Path, help="the (newer) signed checkpoint")
    p.add_argument("--old", type=Path, help="consistency: the older signed checkpoint")
    p.add_argument("--proof", required=True, type=Path, help="the proof, as timelinectl --json")
    a = p.parse_args(argv)
    key = Path(a.key).read_text() if Path(a.key).is_file() else a.key
    try:
        new = open_checkpoint(a.checkpoint.read_text(encoding="utf-8"), key)
        proof = json.loads(a.proof.read_text(encoding="utf-8"))
        if a.kind == "inclusion":
            inclusion(*new, proof)
        elif a.old is None:
            raise Failed("consistency needs --old")
        else:
            consistency(open_checkpoint(a.old.read_text(encoding="utf-8"), key), new, proof)
    except (Failed, ValueError, KeyError) as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    print("verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
