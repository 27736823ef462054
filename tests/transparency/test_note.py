"""Signed notes against golang.org/x/mod/sumdb/note's test vectors (note_test.go, BSD-3-Clause:
TestNewVerifier, TestSign, TestOpen), and checkpoints."""

from __future__ import annotations

import pytest

from timelined.transparency.checkpoint import Checkpoint, open_checkpoint
from timelined.transparency.merkle import EMPTY_ROOT
from timelined.transparency.note import NoteError, Signer, Verifier, open_note, parse, sign

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"  # noqa: E501
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"  # noqa: E501


def test_keys_parse_and_print_back() -> None:
    assert str(Verifier.parse(PETER_VKEY)) == PETER_VKEY
    signer = Signer.parse(PETER_SKEY)
    assert str(signer) == PETER_SKEY
    assert str(signer.verifier()) == PETER_VKEY
    assert "AYEK" not in repr(signer)


@pytest.mark.parametrize(
    "bad",
    [
        PETER_VKEY[:-1],
        PETER_VKEY.replace("c74f20a3", "c74f20a4"),
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_verifier_keys_are_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        Verifier.parse(bad)


def test_sign_gives_the_published_note() -> None:
    assert sign(TEXT, Signer.parse(PETER_SKEY)) == TEXT + "\n" + PETER_SIG


def test_open_verifies_the_published_signatures() -> None:
    peter, enoch = Verifier.parse(PETER_VKEY), Verifier.parse(ENOCH_VKEY)
    note = open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter])
    assert note.text == TEXT and [s.name for s in note.signatures] == ["PeterNeumann", "EnochRoot"]
    assert note.verified_by(enoch)
    with pytest.raises(NoteError, match="no signature"):
        open_note(TEXT + "\n" + ENOCH_SIG, [peter])
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], [peter])
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(TEXT.replace("answer", "ANSWER") + "\n" + PETER_SIG, [peter])


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT
        + "\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",  # noqa: E501
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_are_refused(msg: str) -> None:
    with pytest.raises(NoteError):
        open_note(msg, [Verifier.parse(PETER_VKEY)])


def test_checkpoint_round_trip_and_cosignature() -> None:
    log_key, witness = Signer.generate("example.com/log"), Signer.generate("witness")
    cp = Checkpoint("example.com/log", 0, EMPTY_ROOT)
    assert cp.text() == "example.com/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    signed = open_checkpoint(cp.sign(log_key), log_key.verifier())
    assert signed.checkpoint == cp
    cosigned = signed.note.with_signature(witness)
    assert parse(cosigned).verified_by(witness.verifier())
    assert open_checkpoint(cosigned, log_key.verifier()).checkpoint == cp
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(Checkpoint("other", 0, EMPTY_ROOT).sign(log_key), log_key.verifier())
    with pytest.raises(NoteError):
        Checkpoint.parse_text("origin\n01\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")


def test_a_block_that_differs_from_its_proven_line_is_refused() -> None:
    import msgspec

    from timelined.api.model import Block
    from timelined.auditlog.record import GENESIS_PREV, encode_record
    from timelined.errors import CheckpointInvalid
    from timelined.events import BlockAppended, BlockData
    from timelined.transparency.audit import check_block_line

    ts = "2026-01-02T03:04:05.000006Z"
    data = BlockData(id="blk_1", context_id="ctx_1", role="user", content="said", timestamp=ts)
    _, line = encode_record(7, ts, "daemon", BlockAppended(block=data), GENESIS_PREV)
    read = Block(
        id="blk_1", context_id="ctx_1", role="user", content="said", timestamp=ts, seq=7, position=0
    )
    check_block_line(line[:-1], read)
    for changed in ({"content": "never said"}, {"seq": 8}, {"id": "blk_2"}):
        with pytest.raises(CheckpointInvalid):
            check_block_line(line[:-1], msgspec.structs.replace(read, **changed))
