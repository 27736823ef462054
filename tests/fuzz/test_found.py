"""The bugs the fuzzer found, pinned one by one against a real daemon (the canary watching).

Each of these once crashed the daemon, dropped a connection without a word, answered an
InternalError, or hurt another client; each must now get a named error (or a correct answer)
while everyone else is served.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.daemon.harness import REPO, DaemonProcess, inprocess_daemon, short_tempdir
from tests.fuzz.campaign import FuzzTarget, check_health
from tests.fuzz.exchange_fuzz import FORGED, Mutation, import_and_check
from tests.fuzz.wire import check_reply, connect, exchange
from timelined.commands import MAX_NESTING
from timelined.varlink.client import AsyncConnection, Connection
from timelined.varlink.protocol import VarlinkErrorReply, encode_call
from timelined.writer import rules

T = "io.timelined.Timeline."


def one(target_path: Path, payload: bytes, method: str | None) -> tuple[str | None, Any]:
    """Send one frame, get its one reply, checked (named error or the method's reply)."""
    result = exchange(target_path, [payload])
    assert len(result.frames) == 1, result
    return check_reply(result.frames[0], method)


def root_of(target: FuzzTarget) -> str:
    return target.pool.contexts[0]


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def append_raw(ctx: str, extra: bytes) -> bytes:
    return (
        b'{"method":"io.timelined.Timeline.AppendBlock","parameters":{"context_id":"'
        + ctx.encode()
        + b'","role":"user","content":"x"'
        + extra
        + b"}}\0"
    )


def test_token_counts_beyond_sqlite_integers_are_invalid_parameters(target: FuzzTarget) -> None:
    """Was: OverflowError in the writer thread; the writer task died and took the daemon down."""
    ctx = root_of(target)
    for value in (b"9223372036854775808", b"18446744073709551616", b"99999999999999999999"):
        for name in (b"tokens_input", b"tokens_output"):
            err, params = one(
                target.socket_path,
                append_raw(ctx, b',"' + name + b'":' + value),
                T + "AppendBlock",
            )
            assert (err, params["parameter"]) == (
                "org.varlink.service.InvalidParameter",
                name.decode(),
            )
    err, _ = one(
        target.socket_path,
        append_raw(ctx, b',"tokens_input":9223372036854775807'),
        T + "AppendBlock",
    )
    assert err is None
    check_health(target)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ListBlocks", {"after": 2**63}),
        ("ListBlocks", {"before": 2**64}),
        ("ListConversations", {"after": 2**63}),
        ("Watch", {"after_seq": 2**63}),
    ],
)
def test_cursors_beyond_sqlite_integers_are_invalid_parameters(
    target: FuzzTarget, method: str, params: dict[str, Any]
) -> None:
    """Was: OverflowError in the read → InternalError."""
    if method != "ListConversations":
        params = {"context_id": root_of(target), **params}
        if method == "Watch":
            params = {"after_seq": params["after_seq"]}
    err, _ = one(target.socket_path, encode_call(T + method, params), T + method)
    assert err == "org.varlink.service.InvalidParameter"


@pytest.mark.parametrize(
    "stamp",
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-01:00"],
)
def test_timestamps_out_of_range_in_utc_are_invalid_arguments(
    target: FuzzTarget, stamp: str
) -> None:
    """Was: OverflowError from astimezone → InternalError (ListBlocks) and a dead writer
    (AppendBlock)."""
    ctx = root_of(target)
    err, params = one(
        target.socket_path,
        encode_call(
            T + "AppendBlock",
            {"context_id": ctx, "role": "user", "content": "t", "timestamp": stamp},
        ),
        T + "AppendBlock",
    )
    assert (err, params["parameter"]) == ("io.timelined.Timeline.InvalidArgument", "timestamp")
    for bound in ("since", "until"):
        err, params = one(
            target.socket_path,
            encode_call(T + "ListBlocks", {"context_id": ctx, bound: stamp}),
            T + "ListBlocks",
        )
        assert (err, params["parameter"]) == ("io.timelined.Timeline.InvalidArgument", bound)
    check_health(target)


def test_early_years_keep_four_digits(target: FuzzTarget) -> None:
    """Was: "1-01-01T23:59:00.000000Z" (strftime %Y does not pad years before 1000)."""
    err, params = one(
        target.socket_path,
        encode_call(
            T + "AppendBlock",
            {
                "context_id": root_of(target),
                "role": "user",
                "content": "y",
                "timestamp": "0001-01-01T00:00:00-23:59",
            },
        ),
        T + "AppendBlock",
    )
    assert err is None
    assert params["block"]["timestamp"] == "0001-01-01T23:59:00.000000Z"


@pytest.mark.parametrize("where", ["envelope", "parameters", "metadata"])
def test_deep_nesting_gets_a_named_error(target: FuzzTarget, where: str) -> None:
    """Was: RecursionError escaped the connection task: no reply, connection dropped."""
    nest = deep(100_000)
    if where == "envelope":
        frame = b'{"method":"io.timelined.Admin.GetStatus","x":' + nest + b"}\0"
        want = "io.timelined.Timeline.ProtocolError"
    elif where == "parameters":
        frame = b'{"method":"io.timelined.Admin.GetStatus","parameters":{"x":' + nest + b"}}\0"
        want = "io.timelined.Timeline.ProtocolError"  # the envelope skips over them: same limit
    else:
        frame = append_raw(root_of(target), b',"metadata":{"x":' + nest + b"}")
        want = "io.timelined.Timeline.ProtocolError"
    result = exchange(target.socket_path, [frame])
    assert len(result.frames) == 1 and result.closed
    assert check_reply(result.frames[0], None)[0] == want
    check_health(target)


def test_invalid_utf8_inside_parameters_is_a_protocol_error(target: FuzzTarget) -> None:
    """Was: UnicodeDecodeError from the parameter decoder escaped: no reply, dropped."""
    frame = append_raw(root_of(target), b',"metadata":{"k":"\xaa\xff"}')
    result = exchange(target.socket_path, [STATUS_CALL, frame, STATUS_CALL])
    assert len(result.frames) == 2 and result.closed
    assert check_reply(result.frames[0], "io.timelined.Admin.GetStatus")[0] is None
    assert check_reply(result.frames[1], None)[0] == "io.timelined.Timeline.ProtocolError"


STATUS_CALL = encode_call("io.timelined.Admin.GetStatus", {})


def test_repair_while_others_read(target: FuzzTarget) -> None:
    """Was: Repair reopened the read connections under reads in progress: those failed with
    "Cannot operate on a closed database" (InternalError for an unrelated client), and the
    closed connections went back to the pool for later reads to fail on."""
    blocks = target.pool.blocks[:3]
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        conn = Connection.open(target.socket_path, timeout=30)
        try:
            while not stop.is_set():
                for b in blocks:
                    try:
                        conn.call(T + "GetBlock", {"id": b})
                    except VarlinkErrorReply as exc:
                        errors.append(str(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    admin = Connection.open(target.socket_path, timeout=60)
    try:
        for _ in range(4):
            admin.call("io.timelined.Admin.Repair", {})
            time.sleep(0.05)
    finally:
        admin.close()
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    check_health(target)


def test_a_failing_command_does_not_stop_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: only a few exception types were caught per command; any other (OverflowError,
    RecursionError, …) ended the writer task and with it the daemon, with the batch's other
    commands unanswered. Now the one command gets an InternalError and the rest go on."""
    real = rules.execute

    def execute(tx: Any, command: Any, now: str) -> Any:
        if getattr(command, "content", None) == "boom":
            raise OverflowError("a bug in one command")
        return real(tx, command, now)

    monkeypatch.setattr(rules, "execute", execute)

    async def main() -> None:
        with short_tempdir() as base:
            async with inprocess_daemon(base) as d:
                c = await AsyncConnection.open(d.socket_path)
                conv = await c.call(T + "CreateConversation", {"name": "w"})
                ctx = conv["conversation"]["root_context_id"]

                async def append(content: str) -> Any:
                    conn = await AsyncConnection.open(d.socket_path)
                    try:
                        return await conn.call(
                            T + "AppendBlock",
                            {"context_id": ctx, "role": "user", "content": content},
                        )
                    except VarlinkErrorReply as exc:
                        return exc
                    finally:
                        conn.close()

                results: list[Any] = []
                async with anyio.create_task_group() as tg:
                    for content in ["a", "boom", "b", "boom", "c"]:
                        tg.start_soon(lambda x=content: _collect(results, append(x)))
                errs = [r for r in results if isinstance(r, VarlinkErrorReply)]
                oks = [r for r in results if not isinstance(r, VarlinkErrorReply)]
                assert [e.name for e in errs] == ["io.timelined.Timeline.InternalError"] * 2
                assert sorted(r["block"]["content"] for r in oks) == ["a", "b", "c"]
                after = await c.call(T + "ListBlocks", {"context_id": ctx})
                assert sorted(b["content"] for b in after["blocks"]) == ["a", "b", "c"]
                c.close()

    anyio.run(main)


async def _collect(results: list[Any], coro: Any) -> None:
    results.append(await coro)


def test_metadata_nesting_is_bounded_and_what_is_accepted_reads_back_everywhere() -> None:
    """Was: metadata nested up to ~950 levels was accepted (just under the daemon's recursion
    limit), and then no client reading it from a deeper stack could decode the reply: one
    client could make a context unreadable for others. Now past MAX_NESTING it is an
    InvalidParameter, and the deepest accepted metadata reads back, replays at boot (clean
    and unclean) and verifies offline."""
    with short_tempdir("tld") as base:
        daemon = DaemonProcess(base).start()
        try:
            conv = exchange(
                daemon.socket_path, [encode_call(T + "CreateConversation", {"name": "deep"})]
            )
            ctx = json.loads(conv.frames[0])["parameters"]["conversation"]["root_context_id"]

            def append(depth: int, sub: bool = False) -> tuple[str | None, Any]:
                meta = b'{"x":' + deep(depth - 1) + b"}"
                extra = (
                    b',"sub_blocks":[{"type":"t","content":"c","metadata":' + meta + b"}]"
                    if sub
                    else b',"metadata":' + meta
                )
                r = exchange(daemon.socket_path, [append_raw(ctx, extra)])
                return check_reply(r.frames[0], T + "AppendBlock")

            for sub in (False, True):
                name, params = append(MAX_NESTING + 1, sub)
                assert name == "org.varlink.service.InvalidParameter", params
                assert params["parameter"].endswith("metadata"), params
            name, params = append(MAX_NESTING)
            assert name is None, params
            block_id = params["block"]["id"]
            assert append(MAX_NESTING, sub=True)[0] is None
            reads = [
                (T + "GetBlock", {"id": block_id}),
                (T + "ListBlocks", {"context_id": ctx, "limit": 1000}),
                (T + "GetHistory", {"context_id": ctx}),
                ("io.timelined.Admin.ReadLog", {"limit": 1000}),
            ]
            for method, p in reads:
                r = exchange(daemon.socket_path, [encode_call(method, p)])
                assert check_reply(r.frames[0], method)[0] is None, r.frames[0][:300]
            assert daemon.stop() == 0
            daemon.start()  # a clean boot
            daemon.kill()
            daemon.start()  # an unclean one
            r = exchange(daemon.socket_path, [encode_call(T + "GetBlock", {"id": block_id})])
            assert check_reply(r.frames[0], T + "GetBlock")[0] is None
            assert daemon.stop() == 0
            verify = subprocess.run(
                [sys.executable, "-m", "timelined", "verify", "--state-dir", str(daemon.state_dir)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert verify.returncode == 0, (verify.stdout[-2000:], verify.stderr[-2000:])
        finally:
            daemon.kill()


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in sorted(FORGED.items()) for v in values]
)
def test_a_forged_export_cannot_import_what_a_write_refuses(
    target: FuzzTarget, field: str, value: Any
) -> None:
    """Was: a self-consistent forged document (hash recomputed) imported blocks a direct
    AppendBlock refuses — metadata nested too deeply, a role outside its pattern, negative
    tokens, content past max_block_bytes, a timestamp that is no time — and token counts past
    SQLite's integers made the verification replay fail with an InternalError."""
    import_and_check(target, target.pool.conversations[0], Mutation("forge", 0, 0, (field, value)))
    check_health(target)


def test_an_untouched_export_imports_and_keep_is_refused(target: FuzzTarget) -> None:
    import_and_check(target, target.pool.conversations[0], Mutation("none"))
    import_and_check(target, target.pool.conversations[0], Mutation("keep"))


def test_an_export_with_a_cross_reference_from_another_conversation_imports(
    target: FuzzTarget,
) -> None:
    """Was: a context referred to from another conversation was exported with that
    cross-reference in the header's tree but without its event (it belongs to the other
    conversation), so the export could never be imported: "the tree in the header does not
    match its events"."""

    def create(name: str) -> dict[str, Any]:
        frame = exchange(
            target.socket_path, [encode_call(T + "CreateConversation", {"name": name})]
        )
        return dict(json.loads(frame.frames[0])["parameters"]["conversation"])

    a, b = create("referred to"), create("referring")
    ref = exchange(
        target.socket_path,
        [
            encode_call(
                T + "AddCrossRef",
                {"from_id": b["root_context_id"], "to_id": a["root_context_id"], "kind": "see"},
            )
        ],
    )
    assert check_reply(ref.frames[0], T + "AddCrossRef")[0] is None
    import_and_check(target, a["id"], Mutation("none"))
    import_and_check(target, b["id"], Mutation("none"))


def test_a_half_closed_client_gets_its_whole_stream(target: FuzzTarget) -> None:
    """Was: a client that sent ExportConversation with `more` and then shut its sending side
    ("no more calls", as one-shot clients do) got nothing, or a frame torn in the middle: the
    daemon took the half-close for a hang-up and cancelled the stream. Calls without `more`
    were answered after a half-close all along; now streams are too, and a real close still
    ends a stream at once."""
    conv = target.pool.conversations[0]
    export = encode_call(T + "ExportConversation", {"id": conv}, more=True)
    result = exchange(target.socket_path, [export + STATUS_CALL])
    assert result.closed and not result.tail
    replies = [json.loads(f) for f in result.frames]
    assert all(r.get("continues") for r in replies[:-2]), replies
    assert "end" in replies[-2]["parameters"] and "continues" not in replies[-2]
    assert check_reply(result.frames[-1], "io.timelined.Admin.GetStatus")[0] is None
    # a Watch to a client that closes for good (after a half-close, or mid-frame) ends
    watch = encode_call(T + "Watch", {"conversation_id": conv}, more=True)
    for tail in (b"", b'{"meth'):
        s = connect(target.socket_path)
        s.sendall(watch + tail)
        if not tail:
            s.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
        s.close()
    deadline = time.monotonic() + 5
    while True:
        status = one(target.socket_path, STATUS_CALL, "io.timelined.Admin.GetStatus")[1]
        if status["status"]["connections"]["streams"] == 0:
            break
        assert time.monotonic() < deadline, status["status"]["connections"]
        time.sleep(0.1)
    check_health(target)
