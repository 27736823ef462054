"""timelined as a LangChain chat message history: `TimelinedChatMessageHistory`
(docs/integrations.md).

LangChain's `BaseChatMessageHistory` is a class to subclass, so the class is made on first
access (this module's `__getattr__`): `import timelined.integrations.langchain` loads nothing of
`langchain_core`; `from timelined.integrations.langchain import TimelinedChatMessageHistory`
does. Type checkers see the class itself.

    history = TimelinedChatMessageHistory("user-42")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])   # one AppendBlocks
    history.messages                                                 # [HumanMessage, AIMessage]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timelined.integrations._langchain_history import TimelinedChatMessageHistory

__all__ = ["TimelinedChatMessageHistory"]


def __getattr__(name: str) -> Any:
    if name == "TimelinedChatMessageHistory":
        from timelined.integrations import _langchain_history

        return _langchain_history.TimelinedChatMessageHistory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
