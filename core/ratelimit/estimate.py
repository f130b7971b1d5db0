"""A cheap token estimate of a request, made before the call (DESIGN.md, rate limits).

tiktoken would need to download its encodings on first use and these machines have no
network, so: 4 tokens per message plus one per 4 characters of its text, plus the output
budget (`max_tokens`, or a default when the client set none). The limiter books this
estimate and reconciles it with the usage the provider reports.
"""

from __future__ import annotations

import json
import math
from typing import Any

from core.domain.chat import ChatRequest

PER_MESSAGE_TOKENS = 4
DEFAULT_OUTPUT_TOKENS = 256


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return json.dumps(content)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    total = 0
    for message in request.messages:
        text = _text(message.get("content"))
        if message.get("tool_calls"):
            text += json.dumps(message["tool_calls"])
        total += PER_MESSAGE_TOKENS + math.ceil(len(text) / 4)
    if request.params.get("tools"):
        total += math.ceil(len(json.dumps(request.params["tools"])) / 4)
    return total


def output_bound(request: ChatRequest, limit: int) -> int:
    """The most output tokens a call can be answered with: the request's own bound, else the
    target's output limit (what a spend reservation must cover)."""
    asked = request.max_output_tokens
    return min(asked, limit) if asked is not None else limit


def estimate_tokens(request: ChatRequest) -> int:
    """Prompt estimate plus the output budget."""
    return estimate_prompt_tokens(request) + (request.max_output_tokens or DEFAULT_OUTPUT_TOKENS)
