"""The framework adapters (timelined.integrations) beside the frameworks' own stores.

One turn of an agent is an `add_items` of a few items, then a `get_items` of the latest ones
before the next model call. Each figure is the median over `env.repeats` windows of one
sequential caller (one session, as an agent run uses it), against a real daemon with
`log.fsync = "always"` (every add durable before it returns):

- OpenAI Agents SDK: `TimelinedSession.add_items` (4 items: one AppendBlocks) and
  `get_items(limit=20)`, beside the SDK's `SQLiteSession` on a file (its own default is
  `:memory:`, which is not durable at all) in the same run;
- LangChain: `TimelinedChatMessageHistory.aadd_messages` (4 messages) and `aget_messages`
  (the whole history of the window's session), beside `InMemoryChatMessageHistory`.

The frameworks' stores do not fsync (SQLiteSession: SQLite's default journal, synchronous FULL
on commit, but no group commit across sessions; the in-memory history: nothing): the rows say
what durability and the audit log cost at one caller, not which is "faster".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.env import Env
from benchmarks.stats import median

PART = "adapters"
ITEMS_PER_ADD = 4
GET_LIMIT = 20


def _items(n: int) -> list[dict[str, Any]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn item {i} " * 8}
        for i in range(n)
    ]


async def _rate(op: Callable[[], Awaitable[Any]], window_s: float) -> float:
    """Calls per second of `op`, one at a time, for `window_s`."""
    await op()  # warm: the session's conversation is found or made here
    done = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < window_s:
        await op()
        done += 1
    return done / elapsed


async def _openai(socket: str, env: Env) -> dict[str, list[float]]:
    from agents.memory import SQLiteSession

    from timelined.client import AsyncClient
    from timelined.integrations.openai_agents import TimelinedSession

    items: Any = _items(ITEMS_PER_ADD)
    rates: dict[str, list[float]] = {k: [] for k in ("ours_add", "ours_get", "sql_add", "sql_get")}
    async with AsyncClient(socket) as client:
        for _ in range(env.repeats):  # interleaved, so that a load change touches both
            ours = TimelinedSession(f"bench-{uuid.uuid4()}", client)
            theirs = SQLiteSession("bench", env.scratch(f"sqlite-{uuid.uuid4()}") / "s.db")
            rates["ours_add"].append(await _rate(partial(ours.add_items, items), env.window_s))
            rates["sql_add"].append(await _rate(partial(theirs.add_items, items), env.window_s))
            rates["ours_get"].append(await _rate(partial(ours.get_items, GET_LIMIT), env.window_s))
            rates["sql_get"].append(await _rate(partial(theirs.get_items, GET_LIMIT), env.window_s))
            theirs.close()
    return rates


async def _langchain(socket: str, env: Env) -> dict[str, list[float]]:
    import warnings

    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.messages import messages_from_dict

    from timelined.integrations.langchain import TimelinedChatMessageHistory

    messages = messages_from_dict(
        [{"type": "human", "data": {"content": i["content"]}} for i in _items(ITEMS_PER_ADD)]
    )
    rates: dict[str, list[float]] = {k: [] for k in ("ours_add", "ours_get", "mem_add", "mem_get")}
    for _ in range(env.repeats):
        ours = TimelinedChatMessageHistory(f"bench-{uuid.uuid4()}", socket=socket)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = InMemoryChatMessageHistory()
        try:
            rates["ours_add"].append(
                await _rate(partial(ours.aadd_messages, messages), env.window_s)
            )
            rates["mem_add"].append(
                await _rate(partial(theirs.aadd_messages, messages), env.window_s)
            )
            # A bounded history to read: the add window's size differs between the two.
            await ours.aclear()
            await theirs.aclear()
            await ours.aadd_messages(messages * (GET_LIMIT // ITEMS_PER_ADD))
            await theirs.aadd_messages(messages * (GET_LIMIT // ITEMS_PER_ADD))
            rates["ours_get"].append(await _rate(ours.aget_messages, env.window_s))
            rates["mem_get"].append(await _rate(theirs.aget_messages, env.window_s))
        finally:
            ours.close()
    return rates


def _report(
    env: Env, framework: str, ours: str, theirs: str, rates: dict[str, list[float]]
) -> None:
    reference = "sql" if "sql_add" in rates else "mem"
    got = f"latest {GET_LIMIT}" if reference == "sql" else f"all {GET_LIMIT}"
    for op, what in (("add", f"{ITEMS_PER_ADD} items"), ("get", got)):
        base = median(rates[f"{reference}_{op}"])
        env.results.add(
            PART,
            f"{framework}: {ours} {op} ({what}), one caller",
            median(rates[f"ours_{op}"]),
            "calls/s",
            ratio_to=(theirs, base),
            detail={"ours": rates[f"ours_{op}"], "theirs": rates[f"{reference}_{op}"]},
            note=f"{theirs}: {base:,.0f} calls/s",
        )


def run(env: Env) -> None:
    with Daemon(write_config(env.scratch("adapters"))) as daemon:
        daemon.start()
        socket = str(daemon.socket_path)
        openai = asyncio.run(_openai(socket, env))
        langchain = asyncio.run(_langchain(socket, env))
        daemon.stop()
    _report(env, "openai-agents", "TimelinedSession", "SQLiteSession (file)", openai)
    _report(
        env, "langchain", "TimelinedChatMessageHistory", "InMemoryChatMessageHistory", langchain
    )
