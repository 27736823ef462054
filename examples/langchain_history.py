"""A LangChain chat message history stored in timelined (docs/integrations.md).

Runs against the daemon of `make run` (or the one $TIMELINED_SOCKET names); needs
`pip install 'timelined[langchain]'`. No model is called: the history is what
`RunnableWithMessageHistory(chain, lambda sid: TimelinedChatMessageHistory(sid))` would read
and write.

    python examples/langchain_history.py [SESSION_ID]
"""

from __future__ import annotations

import sys

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from timelined.integrations.langchain import TimelinedChatMessageHistory


def main(session_id: str) -> None:
    history = TimelinedChatMessageHistory(session_id)
    try:
        history.clear()  # start over (the old messages stay in the log, archived)
        history.add_messages(  # one AppendBlocks
            [
                SystemMessage("You are terse."),
                HumanMessage("What is the weather in Paris?"),
                AIMessage("Sunny.", response_metadata={"model": "example"}),
            ]
        )
        for message in history.messages:
            print(f"{message.type}: {message.content}")
    finally:
        history.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "example")
