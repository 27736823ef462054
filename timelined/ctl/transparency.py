"""Verifiable-history verbs: checkpoint, checkpoint-key, prove, consistency-proof, audit,
witness-key, cosign, verify-export (docs/transparency.md)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from timelined.api.exchange import ExportPart
from timelined.api.transparency import CheckpointKeyReply, CheckpointReply
from timelined.auditlog.atomic import write_file_atomic
from timelined.ctl.common import (
    ADMIN,
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_USAGE,
    Ctl,
    Verbs,
    positive,
)
from timelined.transparency import audit as trust
from timelined.transparency import note
from timelined.transparency.note import NoteError, Signer


def register(verbs: Verbs) -> None:
    p = verbs.add_parser("checkpoint", help="the daemon's signed checkpoint (a C2SP signed note)")
    p.set_defaults(run=checkpoint)

    p = verbs.add_parser("checkpoint-key", help="the checkpoints' note verifier key")
    p.set_defaults(run=checkpoint_key)

    p = verbs.add_parser(
        "prove", help="prove that event SEQ is in the daemon's signed checkpoint, and check it"
    )
    p.add_argument("seq", type=positive, metavar="SEQ")
    p.add_argument("--key", help="the verifier key to trust (default: the daemon's own)")
    p.set_defaults(run=prove)

    p = verbs.add_parser(
        "consistency-proof", help="the RFC 6962 consistency proof from tree size OLD to NEW"
    )
    p.add_argument("old_size", type=positive, metavar="OLD")
    p.add_argument("new_size", type=positive, nargs="?", metavar="NEW", help="default: now")
    p.set_defaults(run=consistency_proof)

    p = verbs.add_parser(
        "audit",
        help="verify the daemon's checkpoint against the one remembered in FILE, then remember "
        "it (exit 1: the signature or the history does not verify)",
    )
    p.add_argument("--since", required=True, metavar="FILE", help="the remembered checkpoint")
    p.add_argument("--key", help="the verifier key to trust at the first audit")
    p.set_defaults(run=audit)

    p = verbs.add_parser(
        "witness-key", help="create a witness's signing key (0600) and print its verifier key"
    )
    p.add_argument("name", help="the witness's name (no spaces, no '+')")
    p.add_argument("--out", required=True, metavar="FILE", help="the new key file")
    p.set_defaults(run=witness_key)

    p = verbs.add_parser(
        "cosign",
        help="audit (as `audit --since FILE`), then print the checkpoint co-signed with a "
        "witness key: a witness vouches only for a history it saw extend",
    )
    p.add_argument("--since", required=True, metavar="FILE", help="the remembered checkpoint")
    p.add_argument("--witness-key", required=True, metavar="FILE", help="from witness-key")
    p.add_argument("--key", help="the daemon's verifier key to trust at the first audit")
    p.set_defaults(run=cosign)

    p = verbs.add_parser(
        "verify-export",
        help="prove every event of an export (timelinectl export's file) in its checkpoint, "
        "and that checkpoint one history with CHECKPOINT (exit 1 naming the first bad seq)",
    )
    p.add_argument("file", metavar="FILE", help="the export, one part per line")
    p.add_argument(
        "--checkpoint", required=True, metavar="FILE", help="a signed checkpoint obtained elsewhere"
    )
    p.add_argument("--key", required=True, help="the log's note verifier key")
    p.set_defaults(run=verify_export)


def checkpoint(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "GetCheckpoint")

    def human() -> None:
        ctl.out.write(reply.checkpoint)  # the note's exact bytes: a verifier reads them

    ctl.out.reply(reply, human)
    return 0


def checkpoint_key(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "GetCheckpointKey")
    ctl.out.reply(reply, lambda: ctl.out.line(reply.verifier_key))
    return 0


def consistency_proof(ctl: Ctl) -> int:
    a = ctl.args
    reply = ctl.call(ADMIN + "GetConsistencyProof", old_size=a.old_size, new_size=a.new_size)
    ctl.out.reply(reply, lambda: ctl.out.lines(reply.hashes))
    return 0


class ProofResult(msgspec.Struct, frozen=True):
    seq: int
    leaf_index: int
    tree_size: int
    hashes: list[str]
    line: str
    checkpoint: str
    verified: bool


def prove(ctl: Ctl) -> int:
    seq: int = ctl.args.seq
    key = ctl.args.key or ctl.call(ADMIN + "GetCheckpointKey").verifier_key
    signed = trust.open_signed(
        ctl.call(ADMIN + "GetCheckpoint").checkpoint, trust.parse_verifier(key)
    )
    size = signed.checkpoint.size
    # A seq past the checkpoint is the daemon's to refuse: InvalidArgument (exit 65), as
    # docs/transparency.md says, not a checkpoint that "does not verify".
    proof = ctl.call(ADMIN + "GetInclusionProof", seq=seq, tree_size=size)
    events = ctl.call(ADMIN + "ReadLog", after_seq=seq - 1, limit=1).events
    line = bytes(events[0])
    trust.check_inclusion(signed, seq, line, proof.hashes)  # raises if it does not verify
    result = ProofResult(
        seq, proof.leaf_index, proof.tree_size, proof.hashes, line.decode(), signed.text, True
    )

    def human() -> None:
        ctl.out.line(
            f"event {seq} is leaf {proof.leaf_index} of the signed tree of size {size}: verified"
        )
        ctl.out.fields([("proof", " ".join(proof.hashes) or "(none: a one-leaf tree)")])

    ctl.out.reply(result, human)
    return 0


def _audit(ctl: Ctl) -> trust.AuditResult | int:
    """`client.audit` (which rewrites the --since file), or the exit code of a --since file
    that cannot be read (a directory, no permission: 66) or written (its directory is missing,
    not writable, the disk is full: 73)."""
    since: str = ctl.args.since
    try:
        # Read once here, before the audit reads and rewrites it, so that an OSError of the
        # audit's is its write's: the client's audit raises both as OSError.
        trust.load_remembered(since)
    except OSError as exc:
        return ctl.out.fail(
            EX_NOINPUT,
            "CannotRead",
            f"cannot read {since}: {exc.strerror or exc}",
            path=since,
        )
    try:
        return ctl.client.audit(since, verifier_key=ctl.args.key)
    except OSError as exc:  # the socket's errors arrive named, never as OSError
        return ctl.out.fail(
            EX_CANTCREAT,
            "CannotWrite",
            f"cannot write {since}: {exc.strerror or exc}",
            path=since,
        )


def audit(ctl: Ctl) -> int:
    result = _audit(ctl)
    if isinstance(result, int):
        return result

    def human() -> None:
        if result.old_size is None:
            how = (
                "trusting the daemon's key on first use"
                if result.key_trusted_on_first_use
                else "with the given key"
            )
            ctl.out.line(f"first audit of {result.origin} ({how}): tree size {result.new_size}")
        else:
            ctl.out.line(
                f"{result.origin}: tree size {result.new_size} extends the remembered "
                f"{result.old_size}: consistent"
            )
        ctl.out.fields([("root", result.root), ("remembered in", ctl.args.since)])

    ctl.out.reply(result, human)
    return 0


def witness_key(ctl: Ctl) -> int:
    try:
        signer = Signer.generate(ctl.args.name)
    except NoteError as exc:
        return ctl.out.fail(EX_USAGE, "UsageError", f"witness-key: {exc}")
    if os.path.lexists(ctl.args.out):
        return ctl.out.fail(
            EX_CANTCREAT,
            "CannotWrite",
            f"{ctl.args.out} exists: keys are never overwritten",
            path=ctl.args.out,
        )
    try:
        write_file_atomic(ctl.args.out, str(signer).encode() + b"\n", mode=0o600, exact_mode=True)
    except OSError as exc:
        return ctl.out.fail(
            EX_CANTCREAT,
            "CannotWrite",
            f"cannot write {ctl.args.out}: {exc.strerror or exc}",
            path=ctl.args.out,
        )
    ctl.out.reply(
        CheckpointKeyReply(str(signer.verifier())), lambda: ctl.out.line(str(signer.verifier()))
    )
    return 0


def cosign(ctl: Ctl) -> int:
    path: str = ctl.args.witness_key
    try:
        witness = Signer.read(path)
    except OSError as exc:  # 66, as verify-export and import say of a missing input
        return ctl.out.fail(
            EX_NOINPUT,
            "CannotRead",
            f"cannot read the witness key {path}: {exc.strerror or exc}",
            path=path,
        )
    except NoteError as exc:  # read, but not a key (not ASCII text included): bad data, 65
        return _bad_witness_key(ctl, path, str(exc))
    result = _audit(ctl)  # raises unless it extends
    if isinstance(result, int):
        return result
    cosigned = note.parse(result.checkpoint).with_signature(witness)

    def human() -> None:
        ctl.out.write(cosigned)

    ctl.out.reply(CheckpointReply(cosigned), human)
    return 0


def _bad_witness_key(ctl: Ctl, path: str, problem: str) -> int:
    """A witness key file that was read but holds no signer key: exit 65 (EX_DATAERR)."""
    return ctl.out.fail(
        EX_DATAERR,
        "BadWitnessKey",
        f"the witness key {path} is malformed: {problem} (expected witness-key's file, "
        "PRIVATE+KEY+NAME+ID+KEY)",
        path=path,
        problem=problem,
    )


def _read_parts(path: str) -> list[ExportPart]:
    decoder = msgspec.json.Decoder(ExportPart)
    with open(path, encoding="utf-8") as handle:
        return [decoder.decode(line) for line in handle if line.strip()]


def verify_export(ctl: Ctl) -> int:
    a = ctl.args
    try:
        parts = _read_parts(a.file)
        other = Path(a.checkpoint).read_text(encoding="utf-8")
    except OSError as exc:
        return ctl.out.fail(EX_NOINPUT, "CannotRead", f"cannot read: {exc}")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return ctl.out.fail(EX_DATAERR, "BadExport", f"bad export: {exc}")
    # Raises CheckpointInvalid / HistoryRewritten: exit 1, the first bad seq named.
    result = ctl.client.verify_export(parts, other, a.key)

    def human() -> None:
        ctl.out.line(
            f"{result.events} events proven in {result.origin}'s checkpoint of tree size "
            f"{result.tree_size}, one history with the given checkpoint of size "
            f"{result.other_size}: verified"
        )

    ctl.out.reply(result, human)
    return 0
