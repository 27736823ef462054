"""Histories of N events, generated fast and cached: the log written directly, the state replayed.

A history looks like a chat application's memory: conversations of about a thousand events, each
a root context with blocks (user / assistant turns of 10-60 words drawn from a 4,000-word
vocabulary with a Zipf-like skew, so that full-text search sees common and rare words), and every
so often a sidebar (spawned with `inherit_last=20`, a few blocks, then merged back with a summary).

The log is written with `auditlog.encode_record` (sequential seqs, the real hash chain) and a
`LogWriter` with `fsync="off"` in batches of 2,000 lines; the state database is then built from
the log alone by `state.replay.rebuild`, exactly as recovery would. Both are cached under
`results/cache/<N>-v<VERSION>/` with `state-tail<T>.db`, the state as it stood T events before
the end (for the unclean boots), and `tree/`, the Merkle tree of the whole log as the daemon
keeps it (without it the first boot of every installed copy would build the tree from the whole
log, ~8 s at 1M, and the boot part would measure that), so re-runs only copy files.
"""

from __future__ import annotations

import bisect
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.auditlog.source import FileLogSource
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.config import Config
from timelined.events import (
    Actor,
    BlockAppended,
    BlockData,
    ContextMerged,
    ContextSpawned,
    ConversationCreated,
    Event,
)
from timelined.recovery.marker import mark_clean
from timelined.state.db import open_write
from timelined.state.replay import rebuild
from timelined.state.schema import SCHEMA_VERSION
from timelined.treestore.logtree import LogTree

# The cache's key: the generator's own version and the state schema's, so that a cached state
# made by an older schema is never installed as if it were current (the verifier calls that
# drift, rightly).
VERSION = f"1s{SCHEMA_VERSION}"

ACTOR = Actor(uid=1000, gid=1000, pid=4242)
_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "pe",
    "da",
    "ri",
    "ko",
    "mu",
    "la",
    "zen",
    "tor",
    "quil",
    "bar",
    "fen",
    "gio",
    "hal",
    "jun",
    "mor",
    "pix",
    "sto",
    "tra",
    "ven",
    "wex",
    "yor",
]


def vocabulary(size: int = 4000, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class TextGen:
    """Random text with a Zipf-like word distribution (rank r drawn with weight 1/r)."""

    def __init__(self, seed: int = 3) -> None:
        self.words = vocabulary()
        self.rng = random.Random(seed)
        total = 0.0
        self.cum: list[float] = []
        for rank in range(1, len(self.words) + 1):
            total += 1.0 / rank
            self.cum.append(total)

    def text(self, lo: int = 10, hi: int = 60) -> str:
        n = self.rng.randint(lo, hi)
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum, k=n))

    def word(self, rank_lo: int, rank_hi: int) -> str:
        """A word whose frequency rank is in [rank_lo, rank_hi) (0 is the most common)."""
        return self.words[self.rng.randrange(rank_lo, min(rank_hi, len(self.words)))]

    def rank_of(self, p: float) -> int:
        return bisect.bisect_left(self.cum, p * self.cum[-1])


@dataclass(frozen=True)
class Dataset:
    """A cached history: its log, its state (whole, and short of the tail), and facts about it."""

    events: int
    path: Path
    info: dict[str, Any]

    @property
    def log_dir(self) -> Path:
        return self.path / "log"

    @property
    def tree_dir(self) -> Path:
        return self.path / "tree"

    def state_db(self, tail: int = 0) -> Path:
        return self.path / ("state.db" if tail == 0 else f"state-tail{tail}.db")

    def install(self, config: Config, *, clean: bool, tail: int = 0) -> None:
        """Lay this history out as `config.state_dir`: after a clean stop (marker written) or
        after a kill -9 with the state `tail` events behind the log (no marker)."""
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        log_dir = config.log_dir
        log_dir.mkdir()
        segments = sorted(self.log_dir.iterdir())
        for seg in segments[:-1]:
            (log_dir / seg.name).hardlink_to(seg)  # never written again: a link is enough
        shutil.copyfile(segments[-1], log_dir / segments[-1].name)  # the writer appends here
        shutil.copyfile(self.state_db(tail), config.state_db)
        shutil.copytree(self.tree_dir, config.tree_dir)  # the daemon appends to its levels
        if clean:
            assert tail == 0
            head = self.info["head"]
            mark_clean(
                config.marker_path,
                head["seq"],
                head["hash"],
                str(log_dir / head["segment"]),
                head["size"],
            )


class _Writer:
    """Encodes events with sequential seqs and the chain, writing 2,000 lines per write."""

    def __init__(self, log_dir: Path) -> None:
        self.log = LogWriter(log_dir, LogHead(), fsync="off")
        self.seq = 0
        self.prev = GENESIS_PREV
        self.lines: list[bytes] = []
        self.first = 1
        self.clock = time.time() - 86400 * 30  # a month ago, 50 ms per event
        self._sec = -1
        self._sec_text = ""

    def ts(self) -> str:
        self.clock += 0.05
        sec = int(self.clock)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._sec_text}.{int((self.clock - sec) * 1e6):06d}Z"

    def emit(self, event: Event, ts: str) -> None:
        self.seq += 1
        _, line = encode_record(self.seq, ts, ACTOR, event, self.prev)
        self.prev = line[-67:-3].decode()
        self.lines.append(line)
        if len(self.lines) >= 2000:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.log.write_batch(b"".join(self.lines), self.first, self.seq, self.prev)
            self.first = self.seq + 1
            self.lines = []


def _new_id(rng: random.Random, prefix: str, n: int) -> str:
    # Sortable like ids.new_id (a counter in front), but cheap and reproducible.
    return f"{prefix}_{n:010d}{rng.getrandbits(64):016x}"


def generate(log_dir: Path, events: int, seed: int = 1) -> dict[str, Any]:
    """Write a history of exactly `events` events; returns facts the queries need."""
    rng = random.Random(seed)
    gen = TextGen(seed)
    w = _Writer(log_dir)
    n = 0
    roots: list[tuple[str, str, int]] = []  # (conversation, root context, own blocks)
    sidebars: list[tuple[str, int]] = []  # (sidebar context, blocks when merged)
    counter = 0
    while w.seq < events:
        counter += 1
        conv = _new_id(rng, "conv", counter)
        root = _new_id(rng, "ctx", counter)
        ts = w.ts()
        w.emit(
            ConversationCreated(conversation_id=conv, name=gen.text(2, 5), root_context_id=root), ts
        )
        budget = min(events - w.seq, rng.randint(600, 1400))
        own = 0
        while budget > 0:
            if budget > 30 and own >= 20 and rng.random() < 0.01:
                # A sidebar: spawn (parent paused), a few blocks, merged back (parent active).
                n += 1
                side = _new_id(rng, "ctx", 10_000_000 + n)
                w.emit(
                    ContextSpawned(
                        context_id=side,
                        conversation_id=conv,
                        parent_id=root,
                        reason=gen.text(3, 8),
                        inherit_last=20,
                        parent_blocks=own,
                    ),
                    w.ts(),
                )
                k = rng.randint(3, min(25, budget - 3))
                for _ in range(k):
                    _block(w, gen, rng, side)
                w.emit(
                    ContextMerged(
                        context_id=side,
                        parent_id=root,
                        summary=gen.text(10, 30),
                        block_id=_new_id(rng, "blk", w.seq + 1),
                        block_count=k,
                    ),
                    w.ts(),
                )
                own += 1  # the merge block is the parent's
                sidebars.append((side, k))
                budget -= k + 2
                continue
            _block(w, gen, rng, root)
            own += 1
            budget -= 1
        roots.append((conv, root, own))
    w.flush()
    stats = w.log.stats()
    w.log.close()
    return {
        "events": w.seq,
        "conversations": len(roots),
        "sidebars": len(sidebars),
        "head": {
            "seq": stats.head_seq,
            "hash": stats.head_hash,
            "segment": stats.segment,
            "size": stats.segment_size,
        },
        "sample_roots": [list(r) for r in rng.sample(roots, min(200, len(roots)))],
        "sample_sidebars": [list(s) for s in rng.sample(sidebars, min(200, len(sidebars)))],
        "log_bytes": sum(p.stat().st_size for p in log_dir.iterdir()),
    }


def _block(w: _Writer, gen: TextGen, rng: random.Random, context: str) -> None:
    ts = w.ts()
    user = rng.random() < 0.5
    w.emit(
        BlockAppended(
            block=BlockData(
                id=_new_id(rng, "blk", w.seq + 1),
                context_id=context,
                role="user" if user else "assistant",
                content=gen.text(),
                timestamp=ts,
                tokens_input=None if user else rng.randint(50, 4000),
                tokens_output=None if user else rng.randint(20, 800),
            )
        ),
        ts,
    )


def dataset(cache: Path, events: int, *, tail: int = 0) -> Dataset:
    """The cached history of `events` events (built on first use), with `state-tail<tail>.db`."""
    path = cache / f"{events}-v{VERSION}"
    info_path = path / "info.json"
    if not info_path.exists():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        started = time.perf_counter()
        print(f"  (generating a {events:,}-event history in {path} …)", flush=True)
        info = generate(path / "log", events)
        info["generate_s"] = time.perf_counter() - started
        started = time.perf_counter()
        replayed = rebuild(path / "log", path / "state.db")
        info["rebuild_s"] = time.perf_counter() - started
        info["rebuild_events_per_s"] = replayed.applied / max(info["rebuild_s"], 1e-9)
        _to_wal(path / "state.db")
        info["state_bytes"] = (path / "state.db").stat().st_size
        print(
            f"  (generated in {info['generate_s']:.1f} s, state replayed in "
            f"{info['rebuild_s']:.1f} s)",
            flush=True,
        )
        info_path.write_text(json.dumps(info))
    ds = Dataset(events, path, json.loads(info_path.read_text()))
    if tail and not ds.state_db(tail).exists():
        tmp = path / f"state-tail{tail}.tmp"
        tmp.unlink(missing_ok=True)
        rebuild(ds.log_dir, tmp, upto_seq=events - tail)
        _to_wal(tmp)
        tmp.rename(ds.state_db(tail))
    if not ds.tree_dir.exists():
        tmp = path / "tree.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        LogTree.open(tmp, FileLogSource(ds.log_dir), events).close()
        tmp.rename(ds.tree_dir)
    return ds


def _to_wal(db: Path) -> None:
    """Give the replayed database the daemon's settings (WAL), as boot recovery does."""
    conn = open_write(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
