"""A chat request as jobgate carries it to a provider, and the completion that comes back.

Requests are always in the OpenAI chat-completions shape (that is what clients send);
each provider adapter translates from it. Completions are always returned in the OpenAI
`chat.completion` shape, whichever provider answered, with the token usage pulled out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The OpenAI chat-completions fields jobgate forwards (CONTRACT.md, request body of a job).
CHAT_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "tools",
        "tool_choice",
        "response_format",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "parallel_tool_calls",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "reasoning_effort",
        "verbosity",
        "service_tier",
        "store",
        "modalities",
        "prediction",
        "audio",
        "prompt_cache_key",
        "safety_identifier",
        "web_search_options",
    }
)

# Where a job's stored request keeps the Anthropic-shaped original (`ChatRequest.anthropic`).
ANTHROPIC_FIELD = "anthropic"

# finish_reason values that mean the provider finished its answer (DESIGN: completion integrity).
TERMINAL_FINISH_REASONS: frozenset[str] = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "function_call"}
)


@dataclass(frozen=True)
class ChatRequest:
    """The provider-facing part of a job: messages plus the other OpenAI parameters.

    `params` holds every chat field except `model` and `messages`; the target model is
    given separately because one request may be tried on several targets.
    """

    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    # The request as Anthropic's Messages API took it, when it came in that shape (without
    # `model`): an Anthropic target gets it as it is, keeping what only Anthropic has
    # (`thinking`, `cache_control`, system blocks); other targets get `messages` + `params`.
    anthropic: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChatRequest:
        params = {k: v for k, v in body.items() if k in CHAT_FIELDS and k not in {"model", "messages"}}
        return cls(messages=list(body["messages"]), params=params, anthropic=body.get(ANTHROPIC_FIELD))

    @property
    def max_output_tokens(self) -> int | None:
        value = self.params.get("max_completion_tokens", self.params.get("max_tokens"))
        return int(value) if value is not None else None


@dataclass(frozen=True)
class RateLimitHeaders:
    """What a provider said about its own limits on one response (for the fleet limiter)."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True)
class Completion:
    """A provider's successful answer, normalised."""

    body: dict[str, Any]  # OpenAI `chat.completion` shape
    input_tokens: int
    output_tokens: int
    finish_reason: str
    provider: str
    model: str
    rate_limits: RateLimitHeaders | None = None
    # Of `input_tokens`: those read from the provider's prompt cache, and (Anthropic) those
    # written to it; each has its own price.
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
