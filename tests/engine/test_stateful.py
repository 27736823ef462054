"""Random sequences of every command, valid and invalid, against a model of the rules.

After every step: the outcome (result or named error) matches the model, the state database
equals a fresh replay of the log, the chain verifies, and a refused command left no trace.
Part of the contract suite: run on each backend (`store`, tests/stores.py), a fresh store per
example.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import Stores
from tests.helpers import fts_ok
from tests.stores import Store, open_engine
from timelined import commands as cmd
from timelined.api.model import Context, Conversation
from timelined.api.timeline import AppendResult
from timelined.errors import (
    BlockIdConflict,
    ContextNotFound,
    ConversationNotFound,
    CrossConversationMove,
    CycleError,
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
    TimelinedError,
)
from timelined.events import Actor
from timelined.writer.engine import Engine

ACTOR = Actor(uid=1000, gid=1000, pid=4242)


@dataclass
class MContext:
    id: str
    conversation: str
    parent: str | None
    status: str = "active"
    blocks: list[str] = field(default_factory=list)


@dataclass
class MConversation:
    id: str
    root: str
    status: str = "active"


class EngineMachine(RuleBasedStateMachine):
    def __init__(self, stores: Stores, backend: str) -> None:
        super().__init__()
        self.stores = stores
        self.store = store = stores.new(backend)
        self.dir = Path(tempfile.mkdtemp(prefix="tl-stateful-"))
        config = store.config(
            self.dir,
            log={"fsync": "off", "segment_bytes": 8192},
            limits={"max_block_bytes": 2048},
        )
        self.config = config
        self.portal_cm = start_blocking_portal()
        self.portal = self.portal_cm.__enter__()
        self.engine_cm = self.portal.wrap_async_context_manager(open_engine(config))
        self.engine: Engine = self.engine_cm.__enter__()
        self.convs: dict[str, MConversation] = {}
        self.ctxs: dict[str, MContext] = {}
        self.focus: str | None = None
        self.blocks: dict[str, tuple[str, str]] = {}  # id -> (context, content)

    def teardown(self) -> None:
        self.engine_cm.__exit__(None, None, None)
        self.portal_cm.__exit__(None, None, None)
        self.stores.drop(self.store)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- driving -----------------------------------------------------------------------------

    def submit(self, command: cmd.Command) -> object:
        before = self.engine.last_seq
        try:
            result: object = self.portal.call(self.engine.submit, command, ACTOR)
        except TimelinedError as exc:
            assert self.engine.last_seq == before, "a refused command must leave no trace"
            return exc
        # Answered before its COMMIT: the invariants read the state file itself, after it.
        self.portal.call(self.engine.caught_up)
        return result

    def expect(self, outcome: object, error: type[TimelinedError] | None) -> None:
        if error is None:
            assert not isinstance(outcome, TimelinedError), f"unexpected refusal: {outcome!r}"
        else:
            assert isinstance(outcome, error), f"expected {error.__name__}, got {outcome!r}"

    def unstorable(self, *texts: str) -> bool:
        """PostgreSQL cannot store U+0000 in text: a write holding one is InvalidArgument there
        (pgstore/sql.py), stored on SQLite."""
        return self.store.backend == "postgresql" and any("\x00" in t for t in texts)

    def ctx_ids(self) -> list[str]:
        return sorted(self.ctxs)

    def writable(self, ctx: MContext) -> bool:
        return self.convs[ctx.conversation].status == "active"

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from([*self.ctx_ids(), "ctx_missing"]))

    # --- rules -------------------------------------------------------------------------------

    @rule(name=st.text(min_size=1, max_size=20))
    def create_conversation(self, name: str) -> None:
        out = self.submit(cmd.CreateConversation(name=name, metadata={"k": name}))
        if self.unstorable(name):
            self.expect(out, InvalidArgument)
            return
        assert isinstance(out, Conversation)
        self.convs[out.id] = MConversation(out.id, out.root_context_id)
        self.ctxs[out.root_context_id] = MContext(out.root_context_id, out.id, None)
        self.focus = out.root_context_id

    @precondition(lambda self: self.convs)
    @rule(data=st.data())
    def archive_conversation(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.convs)))
        conv = self.convs[cid]
        out = self.submit(cmd.ArchiveConversation(id=cid, reason="done"))
        if conv.status == "archived":
            self.expect(out, InvalidTransition)
            return
        self.expect(out, None)
        conv.status = "archived"
        if self.focus is not None and self.ctxs[self.focus].conversation == cid:
            self.focus = None

    @precondition(lambda self: self.convs)
    @rule(data=st.data(), name=st.text(min_size=1, max_size=10))
    def update_conversation(self, data: st.DataObject, name: str) -> None:
        cid = data.draw(st.sampled_from([*sorted(self.convs), "conv_missing"]))
        out = self.submit(cmd.UpdateConversation(id=cid, name=name))
        if cid not in self.convs:
            self.expect(out, ConversationNotFound)
        elif self.convs[cid].status == "archived":
            self.expect(out, InvalidTransition)
        elif self.unstorable(name):
            self.expect(out, InvalidArgument)
        else:
            self.expect(out, None)
            assert isinstance(out, Conversation) and out.name == name

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data(), inherit=st.integers(0, 5))
    def spawn(self, data: st.DataObject, inherit: int) -> None:
        pid = self.pick(data)
        out = self.submit(cmd.SpawnSidebar(parent_id=pid, reason="why", inherit_last=inherit))
        parent = self.ctxs.get(pid)
        if parent is None:
            self.expect(out, ContextNotFound)
        elif not self.writable(parent) or parent.status not in ("active", "paused"):
            self.expect(out, InvalidTransition)
        else:
            self.expect(out, None)
            assert isinstance(out, Context)
            assert out.parent_id == pid and out.status == "active"
            self.ctxs[out.id] = MContext(out.id, parent.conversation, pid)
            parent.status = "paused"
            self.focus = out.id

    def _transition(
        self, data: st.DataObject, make: type[cmd.Command], allowed: tuple[str, ...], to: str
    ) -> tuple[MContext | None, object]:
        cid = self.pick(data)
        out = self.submit(make(id=cid))  # type: ignore[call-arg]
        ctx = self.ctxs.get(cid)
        if ctx is None:
            self.expect(out, ContextNotFound)
        elif not self.writable(ctx) or ctx.status not in allowed:
            self.expect(out, InvalidTransition)
            return None, out
        else:
            self.expect(out, None)
            ctx.status = to
        return ctx, out

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        self._transition(data, cmd.PauseContext, ("active",), "paused")

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        ctx, _ = self._transition(data, cmd.ResumeContext, ("paused",), "active")
        if ctx is not None:
            self.focus = ctx.id

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        self._transition(data, cmd.RestoreContext, ("archived",), "paused")

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data())
    def archive(self, data: st.DataObject) -> None:
        cid = self.pick(data)
        out = self.submit(cmd.ArchiveContext(id=cid, reason="old"))
        ctx = self.ctxs.get(cid)
        if ctx is None:
            self.expect(out, ContextNotFound)
        elif not self.writable(ctx) or ctx.status == "archived":
            self.expect(out, InvalidTransition)
        else:
            self.expect(out, None)
            ctx.status = "archived"
            if self.focus == cid:
                self.focus = ctx.parent

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data(), summary=st.text(max_size=30))
    def merge(self, data: st.DataObject, summary: str) -> None:
        cid = self.pick(data)
        out = self.submit(cmd.MergeContext(id=cid, summary=summary))
        ctx = self.ctxs.get(cid)
        if ctx is None:
            self.expect(out, ContextNotFound)
            return
        parent = self.ctxs.get(ctx.parent) if ctx.parent else None
        if (
            not self.writable(ctx)
            or parent is None
            or ctx.status not in ("active", "paused")
            or parent.status not in ("active", "paused")
        ):
            self.expect(out, InvalidTransition)
            return
        if self.unstorable(summary):
            self.expect(out, InvalidArgument)
            return
        self.expect(out, None)
        ctx.status = "merged"
        parent.status = "active"
        parent.blocks.append(f"merge:{cid}")
        self.focus = parent.id

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data())
    def reparent(self, data: st.DataObject) -> None:
        cid = self.pick(data)
        target = self.pick(data)
        out = self.submit(cmd.ReparentContext(id=cid, new_parent_id=target))
        ctx, new = self.ctxs.get(cid), self.ctxs.get(target)
        if ctx is None or new is None:
            self.expect(out, ContextNotFound)
            return
        if not self.writable(ctx):
            self.expect(out, InvalidTransition)
            return
        if new.conversation != ctx.conversation:
            self.expect(out, CrossConversationMove)
            return
        chain, cur = [], target
        while cur is not None:
            chain.append(cur)
            cur = self.ctxs[cur].parent
        if cid in chain:
            self.expect(out, CycleError)
        elif ctx.parent == target:
            self.expect(out, InvalidTransition)
        else:
            self.expect(out, None)
            ctx.parent = target

    @precondition(lambda self: self.ctxs)
    @rule(data=st.data())
    def focus_on(self, data: st.DataObject) -> None:
        cid = self.pick(data)
        out = self.submit(cmd.Focus(context_id=cid))
        ctx = self.ctxs.get(cid)
        if ctx is None:
            self.expect(out, ContextNotFound)
        elif not self.writable(ctx) or ctx.status not in ("active", "paused"):
            self.expect(out, InvalidTransition)
        else:
            self.expect(out, None)
            self.focus = cid

    @precondition(lambda self: self.ctxs)
    @rule(
        data=st.data(),
        content=st.text(max_size=40),
        reuse=st.booleans(),
        big=st.booleans(),
    )
    def append(self, data: st.DataObject, content: str, reuse: bool, big: bool) -> None:
        cid = self.pick(data)
        block_id: str | None = None
        if reuse and self.blocks:
            block_id = data.draw(st.sampled_from(sorted(self.blocks)))
        elif data.draw(st.booleans()):
            block_id = f"client-{len(self.blocks)}-{data.draw(st.integers(0, 9))}"
        if big:
            content = "x" * 4096
        out = self.submit(
            cmd.AppendBlock(context_id=cid, role="user", content=content, id=block_id)
        )
        if block_id is not None and block_id in self.blocks:
            stored_ctx, stored_content = self.blocks[block_id]
            if (stored_ctx, stored_content) == (cid, content):
                self.expect(out, None)  # a safe retry returns the stored block
                assert isinstance(out, AppendResult) and out.block.id == block_id
            else:
                self.expect(out, BlockIdConflict)
            return
        ctx = self.ctxs.get(cid)
        if ctx is None:
            self.expect(out, ContextNotFound)
        elif ctx.status not in ("active", "paused") or not self.writable(ctx):
            self.expect(out, InvalidTransition)
        elif big:
            self.expect(out, LimitExceeded)
        elif self.unstorable(content):
            self.expect(out, InvalidArgument)
        else:
            self.expect(out, None)
            assert isinstance(out, AppendResult)
            ctx.blocks.append(out.block.id)
            self.blocks[out.block.id] = (cid, content)
            assert out.block.position == len(ctx.blocks)

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def state_equals_replay(self) -> None:
        live = self.store.dump(self.config.state_dir)
        assert live == self.store.replay(self.config.state_dir, self.dir)
        if self.store.backend == "sqlite":
            assert fts_ok(self.config.state_db)

    @invariant()
    def chain_verifies(self) -> None:
        result = self.store.chain(self.config.state_dir, self.dir)
        assert result.ok, result
        assert result.head_seq == self.engine.last_seq

    @invariant()
    def model_matches_state(self) -> None:
        rows = self.store.dump(self.config.state_dir)
        statuses = {r[0]: r[3] for r in rows["contexts"]}
        assert statuses == {cid: c.status for cid, c in self.ctxs.items()}
        parents = {r[0]: r[2] for r in rows["contexts"]}
        assert parents == {cid: c.parent for cid, c in self.ctxs.items()}
        assert rows["focus"][0][1] == self.focus
        convs = {r[0]: r[3] for r in rows["conversations"]}
        assert convs == {cid: c.status for cid, c in self.convs.items()}
        counts: dict[str, int] = {}
        for r in rows["blocks"]:
            counts[r[2]] = counts.get(r[2], 0) + 1
        assert counts == {cid: len(c.blocks) for cid, c in self.ctxs.items() if c.blocks}


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# An example on PostgreSQL costs a database and a server round trip per statement (~3x SQLite's
# time here): fewer of them, to keep `make test` short; `make stress` is where runs get long.
EXAMPLES = {"sqlite": 25, "postgresql": 10}


def test_engine_stateful(store: Store, stores: Stores) -> None:
    """The machine on `store`'s backend; each example gets a store of its own."""
    run_state_machine_as_test(
        lambda: EngineMachine(stores, store.backend),
        settings=settings(SETTINGS, max_examples=EXAMPLES[store.backend]),
    )
