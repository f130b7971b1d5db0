"""The simulator's token counting rule, the one place every usage figure comes from.

A text's tokens are `ceil(len(text) / 4)` (so any non-empty text is at least 1 token, and the
empty text is 0). A message costs `4 + tokens(its text)`; a prompt is the sum over its messages,
plus, for Anthropic, `4 + tokens(system)` when a system prompt is given. A message's text is its
string content, or the concatenation (no separator) of its text parts when the content is a list;
`tool_result` blocks contribute their own text the same way, other parts (images, tool calls,
tool definitions) count nothing. Tests elsewhere import these functions to compute the usage the
simulator will report, so the rule must stay deterministic and free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 4


def count_tokens(text: str) -> int:
    """Tokens in `text`: ceil(len / 4), 0 only for the empty string."""
    return -(-len(text) // CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the joined text of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "tool_result":
                pieces.append(content_text(part.get("content")))
        return "".join(pieces)
    return ""


def message_tokens(message: Mapping[str, Any]) -> int:
    """One message's share of the prompt: 4 + tokens(its text)."""
    return MESSAGE_OVERHEAD_TOKENS + count_tokens(content_text(message.get("content")))


def prompt_tokens(messages: Iterable[Mapping[str, Any]], system: Any = None) -> int:
    """Prompt tokens of a conversation; `system` is Anthropic's top-level system prompt, if any."""
    total = sum(message_tokens(message) for message in messages)
    if system is not None:
        total += MESSAGE_OVERHEAD_TOKENS + count_tokens(content_text(system))
    return total


def last_user_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text of the last message whose role is `user` ("" when there is none)."""
    text = ""
    for message in messages:
        if message.get("role") == "user":
            text = content_text(message.get("content"))
    return text
