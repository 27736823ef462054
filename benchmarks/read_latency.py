"""The read-after-write latency matrix of a real daemon: every kind of write, then at once every
read that promises read-your-writes; its wall latency and whether it saw the write.

`python -m benchmarks.read_latency [--settle S]`: one `timelined serve` (fsync "always"); for
each (write, read) pair the write's objects are made first, the daemon is left idle for `settle`
seconds (every COMMIT and index timer fired), then the write and, on the same connection, the
read. Then the first read of each kind on a fresh daemon, after a clean restart and after a
kill -9 and boot. A read that waits for a timer or for an unrelated later call shows as a
latency near that timer (80 ms, the search's 1 s); one that misses the write as `MISSED`.
tests/features/test_read_latency.py runs it and asserts on what each read saw.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.api import WatchReply
from timelined.api.exchange import ExportPart
from timelined.client import Client
from timelined.errors import TimelinedError

CheckFn = Callable[[Any], bool]


@dataclass
class Target:
    """What a write touched, and what each read must show of it (read name → predicate on
    the read's answer; a read without one must only answer, and cover the write's seq)."""

    conv: str
    ctx: str
    query: str = "nothingwrittenhere"
    sees: dict[str, CheckFn] = field(default_factory=dict)


@dataclass
class Row:
    write: str
    read: str
    seconds: float
    saw: bool
    detail: str = ""


Setup = Callable[[Client, int], Callable[[], Target]]  # the write's objects → the write


def _conv(c: Client, n: int) -> tuple[str, str]:
    conv = c.create_conversation(f"lat-{n}")
    return conv.id, conv.root_context_id


def _side(c: Client, n: int) -> tuple[str, str, str]:
    conv, root = _conv(c, n)
    return conv, root, c.spawn_sidebar(root, f"side {n}").id


def _ctx_status(ctx: str, status: str) -> dict[str, CheckFn]:
    return {
        "GetContext": lambda r: r.status == status,
        "GetTree": lambda r: any(x.id == ctx and x.status == status for x in r),
    }


def w_create(c: Client, n: int) -> Callable[[], Target]:
    def write() -> Target:
        conv = c.create_conversation(f"new-{n}")
        return Target(
            conv.id,
            conv.root_context_id,
            sees={
                "GetConversation": lambda r: r.id == conv.id,
                "ListConversations": lambda r: conv.id in {x.id for x in r.conversations},
                "GetContext": lambda r: r.id == conv.root_context_id,
                "GetTree": lambda r: [x.id for x in r] == [conv.root_context_id],
                "GetStartupState": lambda r: r.has_data,
            },
        )

    return write


def w_update(c: Client, n: int) -> Callable[[], Target]:
    conv, root = _conv(c, n)

    def write() -> Target:
        c.update_conversation(conv, name=f"renamed-{n}")
        return Target(
            conv,
            root,
            sees={
                "GetConversation": lambda r: r.name == f"renamed-{n}",
                "ListConversations": lambda r: any(
                    x.id == conv and x.name == f"renamed-{n}" for x in r.conversations
                ),
            },
        )

    return write


def w_archive_conv(c: Client, n: int) -> Callable[[], Target]:
    conv, root = _conv(c, n)

    def write() -> Target:
        c.archive_conversation(conv, "done")
        return Target(
            conv,
            root,
            sees={
                "GetConversation": lambda r: r.status == "archived",
                "ListConversations": lambda r: conv not in {x.id for x in r.conversations},
            },
        )

    return write


def w_spawn(c: Client, n: int) -> Callable[[], Target]:
    conv, root = _conv(c, n)

    def write() -> Target:
        side = c.spawn_sidebar(root, f"side {n}").id
        return Target(
            conv,
            side,
            sees={
                "GetContext": lambda r: r.id == side,
                "GetTree": lambda r: side in {x.id for x in r},
                "GetConversationStats": lambda r: sum(r.contexts_per_status.values()) == 2,
            },
        )

    return write


def _status_write(
    verb: Callable[[Client, str], object], status: str, before: Callable[[Client, str], object]
) -> Setup:
    def setup(c: Client, n: int) -> Callable[[], Target]:
        conv, _, side = _side(c, n)
        before(c, side)

        def write() -> Target:
            verb(c, side)
            return Target(conv, side, sees=_ctx_status(side, status))

        return write

    return setup


def _nothing(c: Client, ctx: str) -> None:
    return None


def w_reparent(c: Client, n: int) -> Callable[[], Target]:
    conv, root, side = _side(c, n)
    other = c.spawn_sidebar(root, "other").id

    def write() -> Target:
        c.reparent_context(other, side)
        return Target(
            conv,
            other,
            sees={
                "GetContext": lambda r: r.parent_id == side,
                "GetTree": lambda r: any(x.id == other and x.parent_id == side for x in r),
            },
        )

    return write


def w_focus(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)

    def write() -> Target:
        c.focus(side)
        return Target(
            conv,
            side,
            sees={
                "GetStartupState": lambda r: (
                    r.focused_context is not None and r.focused_context.id == side
                )
            },
        )

    return write


def w_tags(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)

    def write() -> Target:
        c.set_tags(side, [f"tag{n}"])
        return Target(
            conv,
            side,
            sees={
                "GetContext": lambda r: r.tags == [f"tag{n}"],
                "GetTree": lambda r: any(x.id == side and x.tags == [f"tag{n}"] for x in r),
            },
        )

    return write


def w_add_xref(c: Client, n: int) -> Callable[[], Target]:
    conv, root, side = _side(c, n)

    def write() -> Target:
        ref = c.add_crossref(side, root, "see-also").id
        return Target(conv, side, sees={"GetContext": lambda r: ref in {x.id for x in r.crossrefs}})

    return write


def w_revoke_xref(c: Client, n: int) -> Callable[[], Target]:
    conv, root, side = _side(c, n)
    ref = c.add_crossref(side, root, "see-also").id

    def write() -> Target:
        c.revoke_crossref(ref)
        return Target(
            conv, side, sees={"GetContext": lambda r: ref not in {x.id for x in r.crossrefs}}
        )

    return write


def _block_sees(block: str, token: str, count: int) -> dict[str, CheckFn]:
    return {
        "GetContext": lambda r: r.block_count == count,
        "ListBlocks": lambda r: block in {b.id for b in r.blocks},
        "GetHistory": lambda r: r[-1].block.id == block,
        "SearchBlocks": lambda r: block in {h.block_id for h in r.hits},
        "GetConversationStats": lambda r: r.blocks == count,
    }


def w_append(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)

    def write() -> Target:
        token = f"tokena{n}z"
        block = c.append_block(side, "user", f"hello {token}").block.id
        return Target(conv, side, token, _block_sees(block, token, 1))

    return write


def w_append_many(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)

    def write() -> Target:
        token = f"tokenb{n}z"
        done = c.append_blocks(side, [{"role": "user", "content": f"{token} {i}"} for i in (1, 2)])
        return Target(conv, side, token, _block_sees(done[-1].id, token, 2))

    return write


def w_retract(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)
    token = f"tokenr{n}z"
    block = c.append_block(side, "user", f"gone {token}").block.id

    def write() -> Target:
        c.retract_block(block, "oops")
        return Target(
            conv,
            side,
            token,
            sees={
                "ListBlocks": lambda r: block not in {b.id for b in r.blocks},
                "GetHistory": lambda r: block not in {h.block.id for h in r},
                "SearchBlocks": lambda r: block not in {h.block_id for h in r.hits},
            },
        )

    return write


def w_import(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)
    token = f"tokeni{n}z"
    c.append_block(side, "user", f"imported {token}")
    parts = list(c.export_conversation(conv))

    def write() -> Target:
        new = c.import_conversation(parts, mode="new")
        return Target(
            new.id,
            new.root_context_id,
            token,
            sees={
                "GetConversation": lambda r: r.id == new.id,
                "ListConversations": lambda r: new.id in {x.id for x in r.conversations},
                "GetTree": lambda r: len(r) == 2,
                "SearchBlocks": lambda r: new.id in {h.conversation_id for h in r.hits},
                "GetConversationStats": lambda r: r.blocks == 1,
            },
        )

    return write


def w_refused(c: Client, n: int) -> Callable[[], Target]:
    conv, _, side = _side(c, n)

    def write() -> Target:
        c.set_tags(side, [f"kept{n}"])
        try:
            c.restore_context(side)  # not archived: InvalidTransition
        except TimelinedError:
            pass
        else:
            raise AssertionError("RestoreContext of an active context was not refused")
        return Target(conv, side, sees={"GetContext": lambda r: r.tags == [f"kept{n}"]})

    return write


WRITES: dict[str, Setup] = {
    "CreateConversation": w_create,
    "UpdateConversation": w_update,
    "ArchiveConversation": w_archive_conv,
    "SpawnSidebar": w_spawn,
    "PauseContext": _status_write(lambda c, x: c.pause_context(x), "paused", _nothing),
    "ResumeContext": _status_write(
        lambda c, x: c.resume_context(x), "active", lambda c, x: c.pause_context(x)
    ),
    "MergeContext": _status_write(lambda c, x: c.merge_context(x, "sum"), "merged", _nothing),
    "ArchiveContext": _status_write(lambda c, x: c.archive_context(x, "old"), "archived", _nothing),
    "RestoreContext": _status_write(
        lambda c, x: c.restore_context(x), "paused", lambda c, x: c.archive_context(x, "old")
    ),
    "ReparentContext": w_reparent,
    "Focus": w_focus,
    "SetTags": w_tags,
    "AddCrossRef": w_add_xref,
    "RevokeCrossRef": w_revoke_xref,
    "AppendBlock": w_append,
    "AppendBlocks": w_append_many,
    "RetractBlock": w_retract,
    "ImportConversation": w_import,
    "SetTags+refused": w_refused,
}


def _watch_first(c: Client, after: int) -> int | None:
    """The seq of the first event a Watch from `after` is sent; None when the catch-up ends
    (the live marker) without any. On a connection of its own, closed after."""
    with Client(c.socket_path) as own:
        replies = own.stream("io.timelined.Timeline.Watch", {"after_seq": after}, WatchReply)
        for reply in replies:
            if reply.events:
                return int(msgspec.json.decode(reply.events[0])["seq"])
            if reply.live:
                return None
    return None


def _export(c: Client, conv: str) -> list[ExportPart]:
    return list(c.export_conversation(conv))


# Each read: (what it answers for `t`, the write's first seq `first`) and how it covers `head`
# (the log's head after the write): None when it says nothing about seqs.
ReadFn = Callable[[Client, Target, int], Any]
CoverFn = Callable[[Any, int], bool]

READS: dict[str, tuple[ReadFn, CoverFn | None]] = {
    "GetConversation": (lambda c, t, s: c.get_conversation(t.conv), None),
    "ListConversations": (lambda c, t, s: c.list_conversations(limit=1000), None),
    "GetContext": (lambda c, t, s: c.get_context(t.ctx), None),
    "GetTree": (lambda c, t, s: c.get_tree(t.conv), None),
    "ListBlocks": (lambda c, t, s: c.list_blocks(t.ctx, limit=1000), None),
    "GetHistory": (lambda c, t, s: c.get_history(t.ctx), None),
    "SearchBlocks": (
        lambda c, t, s: c.call("io.timelined.Timeline.SearchBlocks", {"query": t.query}),
        lambda r, head: r.indexed_seq >= head,
    ),
    "GetConversationStats": (lambda c, t, s: c.get_conversation_stats(t.conv), None),
    "GetStartupState": (lambda c, t, s: c.get_startup_state(), None),
    "GetStatus": (lambda c, t, s: c.get_status(), lambda r, head: r.last_seq >= head),
    "ReadLog": (lambda c, t, s: c.read_log(after_seq=s - 1), None),  # `_covers`
    "GetCheckpoint": (
        lambda c, t, s: c.get_checkpoint(),
        lambda r, head: int(r.split("\n", 2)[1]) >= head,
    ),
    "GetInclusionProof": (
        lambda c, t, s: c.get_inclusion_proof(s),
        lambda r, head: r.tree_size >= head,
    ),
    "Watch": (lambda c, t, s: _watch_first(c, s - 1), None),  # `_covers`
    "ExportConversation": (
        lambda c, t, s: _export(c, t.conv),
        lambda r, head: (
            r[0].header.source_last_seq >= head
            and r[-1].end is not None
            and r[-1].end.checkpoint is not None
        ),
    ),
}


def _covers(read: str, answer: Any, first: int, head: int) -> bool:
    """Whether the read's answer reaches the write's events (first..head)."""
    if read == "ReadLog":
        return len(answer.events) >= head - first + 1
    if read == "Watch":
        return bool(answer == first)
    cover = READS[read][1]
    return True if cover is None else cover(answer, head)


def timed_read(c: Client, read: str, target: Target, first: int) -> tuple[float, Any]:
    fn = READS[read][0]
    started = time.perf_counter()
    try:
        answer = fn(c, target, first)
    except TimelinedError as exc:
        answer = exc
    return time.perf_counter() - started, answer


def pair(c: Client, write: str, read: str, n: int, settle: float) -> Row:
    do_write = WRITES[write](c, n)
    time.sleep(settle)
    first = c.get_status().last_seq + 1
    target = do_write()
    seconds, answer = timed_read(c, read, target, first)
    head = c.get_status().last_seq  # no other writer: the write's last event
    problems = []
    if isinstance(answer, Exception):
        problems.append(f"{type(answer).__name__}: {answer}")
    else:
        check = target.sees.get(read)
        if check is not None and not check(answer):
            problems.append("the write is not in the answer")
        if not _covers(read, answer, first, head):
            problems.append(f"does not cover seqs {first}..{head}")
    return Row(write, read, seconds, not problems, "; ".join(problems))


def matrix(
    c: Client, settle: float, writes: list[str] | None = None, verbose: bool = False
) -> list[Row]:
    rows: list[Row] = []
    n = 0
    for write in writes or list(WRITES):
        for read in READS:
            n += 1
            rows.append(pair(c, write, read, n, settle))
            if verbose:
                print(table(rows[-1:]), flush=True)
    return rows


def first_reads(proc: DaemonProcess, boot: str, target: Target, first: int) -> list[Row]:
    """The first read of each kind on `proc` right after `boot` ("fresh", "restart", "kill"):
    the daemon is restarted before each, the same way."""
    rows = []
    for read in READS:
        if boot == "fresh":
            proc.stop()
            shutil.rmtree(proc.state_dir)
            proc.start()
        elif boot == "restart":
            proc.stop()
            proc.start()
        elif boot == "kill":
            # A write left open (answered, not committed) when the daemon dies.
            with Client(proc.socket_path) as c:
                c.set_tags(target.ctx, [f"k{time.monotonic_ns()}"])
            proc.kill()
            proc.start()
        with Client(proc.socket_path) as c:
            seconds, answer = timed_read(c, read, target, first)
            head = c.get_status().last_seq
        ok = boot == "fresh" or not isinstance(answer, Exception)
        if ok and not isinstance(answer, Exception) and head:
            ok = _covers(read, answer, min(first, head), head)
        rows.append(Row(boot, read, seconds, ok, "" if ok else repr(answer)[:200]))
    return rows


@contextmanager
def daemon() -> Iterator[DaemonProcess]:
    with short_tempdir() as base, DaemonProcess(Path(base)) as proc:
        yield proc


def boots() -> list[Row]:
    rows: list[Row] = []
    for kind in ("fresh", "restart", "kill"):
        with daemon() as proc:
            if kind == "fresh":
                rows.extend(first_reads(proc, kind, Target("c_none", "x_none"), 1))
                continue
            with Client(proc.socket_path) as c:
                conv, _root, side = _side(c, 0)
                c.append_block(side, "user", "booted tokenboot")
                first = c.get_status().last_seq
            rows.extend(first_reads(proc, kind, Target(conv, side, "tokenboot"), first))
    return rows


def table(rows: list[Row]) -> str:
    out = []
    for row in rows:
        mark = "" if row.saw else f"  MISSED {row.detail}"
        out.append(f"{row.write:22} {row.read:22} {row.seconds * 1000:8.1f} ms{mark}")
    return "\n".join(out)


def slowest(rows: list[Row]) -> str:
    by: dict[str, Row] = {}
    for row in rows:
        if row.write not in by or row.seconds > by[row.write].seconds:
            by[row.write] = row
    return "\n".join(f"{w:22} {r.read:22} {r.seconds * 1000:8.1f} ms" for w, r in by.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--settle", type=float, default=0.25)
    args = parser.parse_args()
    with daemon() as proc, Client(proc.socket_path) as c:
        rows = matrix(c, args.settle, verbose=True)
    booted = boots()
    print(table(booted))
    rows += booted
    print("\nslowest read after each write:")
    print(slowest(rows))


if __name__ == "__main__":
    main()
