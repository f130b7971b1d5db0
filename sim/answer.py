"""Composes the simulator's deterministic answer, independent of either wire format.

The answer to a conversation is `"echo: " + <text of the last user message>`. A stop sequence
found in it cuts the answer just before the earliest match; an answer still longer than
`max_tokens` tokens is cut to `max_tokens * 4` characters (whichever cut comes first wins, as it
would while generating). When the request offers tools and the last user message starts with
`call_tool:`, the answer is instead a call to the first tool with arguments
`{"input": <rest of the message, stripped>}`; tool calls are never cut.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sim.tokens import CHARS_PER_TOKEN, count_tokens

ECHO_PREFIX = "echo: "
TOOL_TRIGGER = "call_tool:"


class Finish(Enum):
    """Why the answer ended, before each wire format names it."""

    END = "end"
    STOP_SEQUENCE = "stop_sequence"
    LENGTH = "length"
    TOOL_CALL = "tool_call"


@dataclass(frozen=True)
class Answer:
    text: str
    finish: Finish
    completion_tokens: int
    stop_sequence: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, str] | None = None

    @property
    def tool_arguments_json(self) -> str:
        """The tool arguments as the JSON string OpenAI sends (and the text tokens are counted on)."""
        return json.dumps(self.tool_input)


def compose_answer(
    user_text: str,
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    tool_name: str | None = None,
) -> Answer:
    """The answer to a conversation whose last user message is `user_text`."""
    if tool_name is not None and user_text.startswith(TOOL_TRIGGER):
        arguments = {"input": user_text[len(TOOL_TRIGGER) :].strip()}
        return Answer(
            text="",
            finish=Finish.TOOL_CALL,
            completion_tokens=count_tokens(json.dumps(arguments)),
            tool_name=tool_name,
            tool_input=arguments,
        )
    text = ECHO_PREFIX + user_text
    finish = Finish.END
    matched: str | None = None
    cut_at = len(text)
    for sequence in stop:
        index = text.find(sequence) if sequence else -1
        if 0 <= index < cut_at:
            cut_at, matched = index, sequence
    if matched is not None:
        text, finish = text[:cut_at], Finish.STOP_SEQUENCE
    if max_tokens is not None and count_tokens(text) > max_tokens:
        text, finish, matched = text[: max_tokens * CHARS_PER_TOKEN], Finish.LENGTH, None
    return Answer(text=text, finish=finish, completion_tokens=count_tokens(text), stop_sequence=matched)
