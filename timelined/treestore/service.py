"""What the daemon runs: the tree subscribed to the engine, signed checkpoints on a timer and at
a clean stop, and the proof lookups of the Admin methods.

The tree is opened before the daemon serves (it must see every commit); the signing key only
when something is first signed or asked for its verifier key, which the daemon starts right
after READY (`load_key`): nothing is signed before, and loading it imports `cryptography`
(~20 ms of CPU) and, at the first boot, writes two files with their fsyncs."""

from __future__ import annotations

import base64
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import anyio

from timelined.auditlog.source import LogSource
from timelined.config import Config
from timelined.errors import FeatureUnavailable, LocalError, TimelinedError
from timelined.treestore.levels import LevelFiles
from timelined.treestore.logtree import REBUILD_MARK, LogTree, build_from_log

if TYPE_CHECKING:  # what signs is imported where something is signed: after READY
    from timelined.transparency.note import Signer

log = logging.getLogger(__name__)
REBUILD_CATCH_UP = 1000  # lines a rebuild reads on the event loop at most, before its swap


@dataclass
class Transparency:
    config: Config
    tree: LogTree
    source: LogSource  # what a rebuild reads
    # The last seq on disk (fsynced): with `log.fsync = "interval"` or "off" the tree runs ahead
    # of it, and a checkpoint over events a power cut then loses would read as a rewritten past.
    durable_seq: Callable[[], int] | None = None
    _signed_size: int = -1
    _signed_note: str = ""
    _lock: anyio.Lock = field(default_factory=anyio.Lock)
    _signer: Signer | None = None
    _key_error: str | None = None  # why the key cannot be used (decided once, as at a boot)
    _key_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @classmethod
    def open(cls, config: Config, head_seq: int, source: LogSource) -> Transparency:
        """Blocking (reads the log to extend the tree): call before serving, off the loop."""
        return cls(config, LogTree.open(config.tree_dir, source, head_seq), source)

    def _read_key(self) -> Signer:
        from timelined.treestore.signing import load_or_create_key

        return load_or_create_key(self.config.keys_dir, self.config.checkpoint.origin)

    def _key_failed(self, exc: TimelinedError | OSError) -> None:
        self._key_error = exc.message if isinstance(exc, TimelinedError) else str(exc)
        log.error("serving without signed checkpoints: the key: %s", self._key_error)

    async def load_key(self) -> None:
        """Load the signing key (create it at the first boot), off the loop; a key that cannot
        be used is logged once and makes the checkpoint methods answer FeatureUnavailable (the
        tree and its proofs are served all the same)."""
        async with self._key_lock:
            if self._signer is None and self._key_error is None:
                try:
                    self._signer = await anyio.to_thread.run_sync(self._read_key)
                except LocalError:  # not a key's problem (those are ConfigError): unexpected
                    raise
                except (TimelinedError, OSError) as exc:
                    self._key_failed(exc)

    async def signer(self) -> Signer:
        await self.load_key()
        if self._signer is None:
            raise FeatureUnavailable("transparency", f"the checkpoint key: {self._key_error}")
        return self._signer

    async def verifier_key(self) -> str:
        return str((await self.signer()).verifier())

    def _note(self, size: int, signer: Signer) -> str:
        from timelined.transparency.checkpoint import Checkpoint

        root = self.tree.root(size)
        return Checkpoint(signer.name, size, root).sign(signer)

    def _keep(self, size: int, note: str) -> None:
        from timelined.treestore.signing import store_checkpoint

        store_checkpoint(self.config.checkpoints_dir, size, note, self.config.checkpoint.keep)

    async def checkpoint(self) -> str:
        """A signed checkpoint of the whole tree as it is now (signed and kept when it grew)."""
        signer = await self.signer()
        async with self._lock:
            size = self.tree.size
            if self.durable_seq is not None:
                size = min(size, self.durable_seq())
            if size != self._signed_size:
                self.tree.flush()
                note = self._note(size, signer)
                await anyio.to_thread.run_sync(self._keep, size, note)
                self._signed_size, self._signed_note = size, note
            return self._signed_note

    def inclusion(self, index: int, size: int) -> list[str]:
        return _b64(self.tree.inclusion(index, size))

    def consistency(self, old_size: int, new_size: int) -> list[str]:
        return _b64(self.tree.consistency(old_size, new_size))

    # --- for the verifier (verifier.scheduler.TreeKeeper) ---------------------------------------

    def flushed_size(self) -> int:
        """Write the waiting hashes; the tree's size (on the loop: its files are the loop's)."""
        self.tree.flush()
        return self.tree.size

    def mark_for_rebuild(self) -> None:
        """A run found the tree differs from the log: the next boot recomputes it."""
        (self.config.tree_dir / REBUILD_MARK).touch()

    async def rebuild(self) -> int:
        """Recompute the tree from the log beside the one served (in a thread: commits go on
        into the old one), catch up with what was committed meanwhile, and swap it in. Returns
        its size. Checkpoints signed from the old tree's differing hashes will not extend to the
        new one's roots: the clients holding them see HistoryRewritten (as they should)."""
        tree_dir, source = self.config.tree_dir, self.source
        new_dir = tree_dir.with_name(tree_dir.name + ".new")

        def start() -> LevelFiles:
            shutil.rmtree(new_dir, ignore_errors=True)
            return LevelFiles.open(new_dir)

        files = await anyio.to_thread.run_sync(start)
        try:
            while self.tree.size - files.size > REBUILD_CATCH_UP:
                await anyio.to_thread.run_sync(build_from_log, files, source, self.tree.size)
            # On the loop from here to the swap: no commit can slip in between.
            build_from_log(files, source, self.tree.size)
            old_dir = tree_dir.with_name(tree_dir.name + ".old")
            shutil.rmtree(old_dir, ignore_errors=True)
            tree_dir.rename(old_dir)
            new_dir.rename(tree_dir)
            files.directory = tree_dir  # where it opens the levels it grows
        except BaseException:
            files.close()
            raise
        self.tree.replace_files(files)
        self._signed_size = -1  # the next checkpoint is signed from the rebuilt tree
        await anyio.to_thread.run_sync(partial(shutil.rmtree, old_dir, ignore_errors=True))
        log.warning("rebuilt the Merkle tree from the log: %d leaves", files.size)
        return files.size

    async def run_forever(self, stopping: anyio.Event) -> None:
        """Sign every `[checkpoint] interval_s` (read fresh: a reload may change it)."""
        while not stopping.is_set():
            with anyio.move_on_after(self.config.checkpoint.interval_s):
                await stopping.wait()
            if stopping.is_set():
                return
            try:
                await self.checkpoint()
            except OSError as exc:
                log.error("could not keep a signed checkpoint: %s", exc)

    def close(self) -> None:
        """At a clean stop, once the engine is closed: the last checkpoint, then the files (the
        key is loaded here if nothing asked for it yet: a stop right after READY)."""
        try:
            size = self.tree.size
            if size != self._signed_size and self._signer is None and self._key_error is None:
                try:
                    self._signer = self._read_key()
                except LocalError:  # as in load_key
                    raise
                except (TimelinedError, OSError) as exc:
                    self._key_failed(exc)
            if size != self._signed_size and self._signer is not None:
                self.tree.flush()
                note = self._note(size, self._signer)
                self._keep(size, note)
                log.info("signed the checkpoint at tree size %d", size)
        finally:
            self.tree.close()


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]
