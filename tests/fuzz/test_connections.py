"""Connection-level abuse against a real daemon, with the canary watching every time.

Slow clients (a byte a second), as many idle connections as `max_connections` allows (and one
more), connections dropped mid-frame and mid-reply, and clients that never read their (large)
replies. Each must cost the daemon nothing it does not get back, and the canary — a polite
client on its own connection — must keep getting correct answers promptly throughout.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fuzz.campaign import FuzzTarget, check_health, fuzz_target
from tests.fuzz.wire import check_reply, connect, exchange, reset_close
from timelined.varlink.protocol import encode_call

MAX_CONNECTIONS = 12
IDLE_TIMEOUT_S = 2
STATUS = encode_call("io.timelined.Admin.GetStatus", {})


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    # Every connection here is root's: its share is all of them (tests/daemon/test_fairness.py
    # has the per-uid share).
    with fuzz_target(
        max_connections=MAX_CONNECTIONS,
        idle_timeout_s=IDLE_TIMEOUT_S,
        max_connections_per_uid=MAX_CONNECTIONS,
    ) as t:
        yield t


def read_frame(s: socket.socket, timeout: float = 10.0) -> bytes | None:
    """One reply frame, or None when the daemon closed first."""
    s.settimeout(timeout)
    buf = b""
    while b"\0" not in buf:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf.split(b"\0", 1)[0]


def closed_by_daemon(s: socket.socket, timeout: float) -> bool:
    """True once the daemon closes `s` (EOF or reset) within `timeout`; data is discarded."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def canary_calls_during(target: FuzzTarget, seconds: float) -> int:
    before = target.canary.calls
    time.sleep(seconds)
    return target.canary.calls - before


class Refused(Exception):
    """GetStatus refused: every connection slot is still taken."""


def status(target: FuzzTarget) -> dict[str, Any]:
    with contextlib.closing(connect(target.socket_path)) as s:
        s.sendall(STATUS)
        frame = read_frame(s)
    assert frame is not None
    reply = json.loads(frame)
    if reply.get("error") == "io.timelined.Timeline.LimitExceeded":
        # Refused at connect: the connections hung up a moment ago still hold their slots.
        raise Refused(reply["parameters"]["message"])
    return reply["parameters"]["status"]


def wait_connections(target: FuzzTarget, at_most: int, limit_s: float = 10.0) -> int:
    """Wait until the daemon holds at most `at_most` connections besides the asking one."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            open_now = status(target)["connections"]["open"] - 1
        except Refused:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        if open_now <= at_most or time.monotonic() > deadline:
            return int(open_now)
        time.sleep(0.05)


# --- slow clients -------------------------------------------------------------------------------


def trickle(path: Any, payload: bytes, per_byte_s: float, result: dict[str, Any]) -> None:
    """Send `payload` one byte at a time; note when the daemon hung up on us."""
    s = connect(path)
    started = time.monotonic()
    try:
        for i in range(len(payload)):
            s.sendall(payload[i : i + 1])
            time.sleep(per_byte_s)
        result["sent_all"] = True
        result["reply"] = read_frame(s, 10)
    except OSError:
        result["sent_all"] = False
    finally:
        result["closed_after_s"] = time.monotonic() - started
        s.close()


def test_slow_clients_are_cut_at_the_idle_timeout_and_block_nobody(target: FuzzTarget) -> None:
    """Eight clients sending a call at a byte a second: the others are served at full speed
    meanwhile, and the daemon hangs up on each once it has been waiting `idle_timeout_s` for
    a complete call."""
    wait_connections(target, at_most=1)
    results: list[dict[str, Any]] = [{} for _ in range(8)]
    threads = [
        threading.Thread(target=trickle, args=(target.socket_path, STATUS, 1.0, r)) for r in results
    ]
    before = target.canary.worst_s
    for t in threads:
        t.start()
    served = canary_calls_during(target, IDLE_TIMEOUT_S + 0.5)
    for t in threads:
        t.join(IDLE_TIMEOUT_S + 15)
    assert served > 20, f"the canary made only {served} calls next to the slow clients"
    assert target.canary.worst_s <= max(before, 1.0), target.canary.report()
    for r in results:
        assert r["sent_all"] is False, f"a byte-a-second client was never cut: {r}"
        # cut after idle_timeout_s (the sweep runs every idle/4 s), not before and not much later
        assert IDLE_TIMEOUT_S - 0.1 <= r["closed_after_s"] <= IDLE_TIMEOUT_S + 3, r
    check_health(target)


def test_a_slow_but_steady_client_is_answered(target: FuzzTarget) -> None:
    """A call that arrives in pieces, complete within the idle timeout, is answered."""
    result: dict[str, Any] = {}
    per_byte = (IDLE_TIMEOUT_S * 0.5) / len(STATUS)
    trickle(target.socket_path, STATUS, per_byte, result)
    assert result["sent_all"], result
    assert result["reply"] is not None
    assert check_reply(result["reply"], "io.timelined.Admin.GetStatus")[0] is None


# --- idle connections up to the limit -----------------------------------------------------------


def open_and_call(target: FuzzTarget) -> tuple[socket.socket, bytes | None]:
    s = connect(target.socket_path)
    s.sendall(STATUS)
    return s, read_frame(s)


def test_idle_connections_up_to_the_limit_then_a_polite_refusal(target: FuzzTarget) -> None:
    held: list[socket.socket] = []
    try:
        wait_connections(target, at_most=1)  # the canary
        # Fill every free slot; each connection proves it was accepted by a call.
        deadline = time.monotonic() + 10
        while len(held) < MAX_CONNECTIONS - 1:
            s, frame = open_and_call(target)
            assert frame is not None, "the daemon hung up without a word"
            name, params = check_reply(frame, "io.timelined.Admin.GetStatus")
            if name is not None:  # a connection of a previous test was still closing
                assert name == "io.timelined.Timeline.LimitExceeded", frame
                s.close()
                assert time.monotonic() < deadline, "the slots never freed up"
                time.sleep(0.05)
                continue
            held.append(s)
        # One too many: a named error, then the daemon closes.
        extra, frame = open_and_call(target)
        assert frame is not None
        name, params = check_reply(frame, None)
        assert name == "io.timelined.Timeline.LimitExceeded", frame
        assert (params["limit"], params["maximum"]) == ("max_connections", MAX_CONNECTIONS)
        assert closed_by_daemon(extra, 5)
        extra.close()
        # The canary, already connected, is served all along.
        assert canary_calls_during(target, 0.5) > 5
        # A slot freed is a slot taken again.
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:
            s, frame = open_and_call(target)
            assert frame is not None
            if check_reply(frame, "io.timelined.Admin.GetStatus")[0] is None:
                held.append(s)
                break
            s.close()
            assert time.monotonic() < deadline, "a freed slot was not given back"
            time.sleep(0.05)
        # Idle connections are closed after idle_timeout_s; the busy canary is not.
        for s in held:
            assert closed_by_daemon(s, IDLE_TIMEOUT_S + 3), "an idle connection was kept"
        assert wait_connections(target, at_most=1) <= 1
        assert canary_calls_during(target, 0.3) > 3
    finally:
        for s in held:
            s.close()
    check_health(target)


def test_a_burst_of_connections_over_the_limit(target: FuzzTarget) -> None:
    """Three times `max_connections` at once: every one gets an answer or the polite refusal,
    none hangs, and the daemon is back to normal after."""
    wait_connections(target, at_most=1)
    socks = [connect(target.socket_path) for _ in range(3 * MAX_CONNECTIONS)]
    for s in socks:
        s.sendall(STATUS)
    names = []
    for s in socks:
        frame = read_frame(s)
        assert frame is not None, "a connection got no answer at all"
        names.append(check_reply(frame, "io.timelined.Admin.GetStatus")[0])
        s.close()
    assert names.count(None) >= MAX_CONNECTIONS - 2, names
    assert set(names) <= {None, "io.timelined.Timeline.LimitExceeded"}, names
    check_health(target)


# --- hang-ups -----------------------------------------------------------------------------------


def fill_context(target: FuzzTarget, blocks: int, size: int) -> tuple[str, str]:
    """(conversation, context) whose ListBlocks reply is `blocks` * `size` bytes."""
    reply = exchange(
        target.socket_path,
        [encode_call("io.timelined.Timeline.CreateConversation", {"name": "big"})],
    ).frames[0]
    conv = json.loads(reply)["parameters"]["conversation"]
    ctx = conv["root_context_id"]
    calls = b"".join(
        encode_call(
            "io.timelined.Timeline.AppendBlock",
            {"context_id": ctx, "role": "assistant", "content": f"{i:06d}" + "z" * size},
        )
        for i in range(blocks)
    )
    done = exchange(target.socket_path, [calls], timeout=120)
    assert len(done.frames) == blocks and all(b'"error"' not in f[:10] for f in done.frames)
    return str(conv["id"]), str(ctx)


@pytest.fixture(scope="module")
def big(target: FuzzTarget) -> tuple[str, str]:
    return fill_context(target, 120, 30_000)  # ListBlocks(limit=1000): a 3.6 MB reply


@pytest.fixture(scope="module")
def big_context(big: tuple[str, str]) -> str:
    return big[1]


def test_hangups_mid_frame_and_mid_reply(target: FuzzTarget, big_context: str) -> None:
    wait_connections(target, at_most=1)
    list_blocks = encode_call(
        "io.timelined.Timeline.ListBlocks", {"context_id": big_context, "limit": 1000}
    )
    for i in range(60):
        # mid-frame: half a call, then a reset
        s = connect(target.socket_path)
        s.sendall(list_blocks[: 1 + i % (len(list_blocks) - 1)])
        reset_close(s)
        # mid-reply: a few bytes of a 3.6 MB reply, then a reset
        s = connect(target.socket_path)
        s.sendall(list_blocks * (1 + i % 3))
        s.recv(1 + i * 100)
        reset_close(s)
        # mid-burst: a pipelined burst and a clean close without reading
        s = connect(target.socket_path)
        s.sendall(STATUS * 20 + list_blocks + STATUS * 5)
        s.close()
    assert wait_connections(target, at_most=1) <= 1, "hung-up connections were kept"
    check_health(target)


def test_clients_that_never_read_their_replies(target: FuzzTarget, big: tuple[str, str]) -> None:
    """Four clients pipeline 3.6 MB replies, two stream exports and a whole-log Watch, and
    none reads: the daemon stops reading from them (their replies wait in their own socket
    buffers), the others are served, memory stays bounded, and all of it is released when
    they go."""
    conversation, big_context = big
    wait_connections(target, at_most=1)
    rss_before = target.rss_kib()
    list_blocks = encode_call(
        "io.timelined.Timeline.ListBlocks", {"context_id": big_context, "limit": 1000}
    )
    export = encode_call(
        "io.timelined.Timeline.ExportConversation", {"id": conversation}, more=True
    )
    watch = encode_call("io.timelined.Timeline.Watch", {}, more=True)
    hogs = []
    for payload in [list_blocks * 40] * 4 + [export * 3] * 2 + [watch]:
        s = connect(target.socket_path)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.send(payload)  # 40 ListBlocks: 144 MB of replies if all were built at once
        hogs.append(s)
    served = canary_calls_during(target, 2.0)
    assert served > 20, f"the canary made only {served} calls next to the hogs"
    assert target.canary.worst_s < 2.0, target.canary.report()
    grown = target.rss_kib() - rss_before
    # One reply (3.6 MB) per hog may be held while it waits for the socket to drain.
    assert grown < 64 * 1024, f"the daemon grew by {grown} KiB for clients that do not read"
    # Another client still gets the same large reply in full.
    whole = exchange(target.socket_path, [list_blocks], timeout=60)
    assert len(whole.frames) == 1
    assert check_reply(whole.frames[0], "io.timelined.Timeline.ListBlocks")[0] is None
    for s in hogs:
        reset_close(s)
    assert wait_connections(target, at_most=1) <= 1
    check_health(target)
