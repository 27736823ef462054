"""An OpenAI Agents SDK session stored in timelined (docs/integrations.md).

Runs against the daemon of `make run` (or the one $TIMELINED_SOCKET names); needs
`pip install 'timelined[openai-agents]'`. No model is called: the script does what
`Runner.run(agent, ..., session=session)` does with a session — reads the history, then adds
the turn's items — so it runs without an API key. With a key, pass the session to Runner.run.

    python examples/openai_agents_session.py [SESSION_ID]
"""

from __future__ import annotations

import asyncio
import sys

from timelined.integrations.openai_agents import TimelinedSession


async def main(session_id: str) -> None:
    session = TimelinedSession(session_id)  # the socket: $TIMELINED_SOCKET or the config's
    try:
        await session.clear_session()  # start over (the old items stay in the log, archived)
        await session.add_items(  # one turn: one AppendBlocks, all or none
            [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ]
        )
        print("latest 2:", await session.get_items(limit=2))
        print("popped:", await session.pop_item())  # retracted, not deleted
        # A sidebar: an agent's tangent that starts from the last 2 items of the main thread.
        side = await session.sidebar("check tomorrow's forecast", inherit_last=2)
        await side.add_items([{"role": "user", "content": "And tomorrow?"}])
        for item in await side.get_items():
            print("sidebar:", item)
        print("context:", await session.context_id(), "sidebar context:", await side.context_id())
    finally:
        await session.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "example"))
