"""A realistic mix of commands for verifier tests and measurements, driven through the Engine."""

from __future__ import annotations

import random

import anyio

from timelined import commands as cmd
from timelined.errors import TimelinedError
from timelined.events import Actor, SubBlock
from timelined.writer.engine import Engine

ACTOR = Actor(uid=1000, gid=1000, pid=4242)

_WORDS = tuple(
    [
        "memory",
        "context",
        "sidebar",
        "merge",
        "summary",
        "model",
        "token",
        "user",
        "assistant",
        "system",
        "tool",
        "cognition",
        "timeline",
        "conversation",
        "audit",
        "chain",
        "hash",
        "verify",
        "replay",
        "state",
        "drift",
        "repair",
        "quarantine",
        "segment",
        "the",
        "a",
        "of",
        "to",
        "and",
        "in",
        "is",
        "it",
        "for",
        "on",
        "with",
        "as",
        "at",
        "by",
        "from",
        "this",
        "that",
        "which",
        "when",
        "where",
        "why",
        "how",
    ]
)


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def append_command(w: random.Random, context_id: str) -> cmd.AppendBlock:
    subs = (
        [SubBlock(type="thought", content=text(w, 8), model="m1", tokens_input=3)]
        if w.random() < 0.2
        else None
    )
    return cmd.AppendBlock(
        context_id=context_id,
        role=w.choice(("user", "assistant", "tool", "cognition")),
        content=text(w, w.randint(5, 40)),
        tokens_input=w.randint(0, 500),
        tokens_output=w.randint(0, 500),
        time_taken=round(w.random(), 3),
        metadata={"n": w.randint(0, 9)} if w.random() < 0.3 else None,
        sub_blocks=subs,
    )


async def append_blocks(
    engine: Engine,
    contexts: list[str],
    until: anyio.Event,
    *,
    writers: int = 8,
    seed: int = 3,
    pause: float = 0.0,
) -> tuple[int, list[BaseException]]:
    """Append valid blocks from `writers` tasks until `until` is set: (appended, errors).

    Each writer waits `pause` seconds between its appends (a steady load, not a flood)."""
    appended = 0
    errors: list[BaseException] = []

    async def writer(k: int) -> None:
        nonlocal appended
        w = random.Random(seed * 1000 + k)
        while not until.is_set():
            try:
                await engine.submit(append_command(w, w.choice(contexts)), ACTOR)
                appended += 1
            except TimelinedError as exc:
                errors.append(exc)
            if pause:
                await anyio.sleep(pause)

    async with anyio.create_task_group() as tg:
        for k in range(writers):
            tg.start_soon(writer, k)
    return appended, errors


async def populate(
    engine: Engine, events: int, *, writers: int = 16, seed: int = 7, stop_at_seq: bool = True
) -> int:
    """Submit commands from `writers` concurrent tasks until the log holds `events` events.

    Returns how many commands were refused by the rules (the mix asks for some invalid moves on
    purpose; a refusal is a named error, never a storage failure).
    """
    rng = random.Random(seed)
    refused = 0
    contexts: list[str] = []
    conv = await engine.submit(cmd.CreateConversation(name="seed"), ACTOR)
    contexts.append(conv.root_context_id)  # type: ignore[union-attr]

    async def one(w: random.Random) -> None:
        nonlocal refused
        roll = w.random() if len(contexts) >= 4 else 0.87
        try:
            if roll < 0.86:
                await engine.submit(append_command(w, w.choice(contexts[-64:])), ACTOR)
            elif roll < 0.90:
                created = await engine.submit(
                    cmd.CreateConversation(name=text(w, 3), metadata={"k": w.randint(0, 99)}),
                    ACTOR,
                )
                contexts.append(created.root_context_id)  # type: ignore[union-attr]
            elif roll < 0.94:
                spawned = await engine.submit(
                    cmd.SpawnSidebar(
                        parent_id=w.choice(contexts[-64:]),
                        reason=text(w, 4),
                        inherit_last=w.randint(0, 5),
                    ),
                    ACTOR,
                )
                contexts.append(spawned.id)  # type: ignore[union-attr]
            elif roll < 0.96:
                await engine.submit(cmd.PauseContext(id=w.choice(contexts[-64:])), ACTOR)
            elif roll < 0.98:
                await engine.submit(cmd.ResumeContext(id=w.choice(contexts[-64:])), ACTOR)
            elif roll < 0.99:
                await engine.submit(
                    cmd.SetTags(context_id=w.choice(contexts[-64:]), tags=[text(w, 1)]), ACTOR
                )
            else:
                await engine.submit(cmd.Focus(context_id=w.choice(contexts[-64:])), ACTOR)
        except TimelinedError:
            refused += 1

    async def writer(k: int) -> None:
        w = random.Random(rng.random() + k)
        while engine.last_seq < events:
            await one(w)

    async with anyio.create_task_group() as tg:
        for k in range(writers):
            tg.start_soon(writer, k)
    return refused
