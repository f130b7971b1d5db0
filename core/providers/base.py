"""The contract every upstream provider adapter satisfies, and the shared check of its answer.

An adapter turns a `ChatRequest` into one blocking call to its upstream and returns a
`Completion` in the OpenAI `chat.completion` shape, or raises one of the named
`core.errors.UpstreamError` subclasses (DESIGN.md principle 5). Workers run many threads
against one adapter, so an adapter is thread-safe and owns exactly one SDK client (one
connection pool) for its provider. `completion_from_openai_body` is the one place that decides
whether an OpenAI-shaped body is a finished answer, so both adapters judge bodies alike;
`header_int` reads the counts in their rate-limit headers alike.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx2

from core.config import ProviderConfig
from core.domain.chat import TERMINAL_FINISH_REASONS, ChatRequest, Completion, RateLimitHeaders
from core.errors import ContentFiltered, Truncated


class Provider(Protocol):
    """One configured upstream (a name from the config file) behind one connection pool."""

    name: str
    kind: str

    def complete(self, request: ChatRequest, model: str) -> Completion:
        """Call the upstream once (no retries) and return its normalised answer."""
        ...

    def close(self) -> None:
        """Close the connection pool; the adapter must not be used afterwards."""
        ...


def sdk_http_client(
    factory: Callable[..., httpx2.Client], config: ProviderConfig, max_connections: int
) -> tuple[httpx2.Client, httpx2.Timeout]:
    """The SDK's own HTTP client (`openai.DefaultHttpxClient` / `anthropic.DefaultHttpxClient`)
    with a pool for every worker thread and the provider's timeout (connecting: 5 s at most)."""
    timeout = httpx2.Timeout(config.timeout_s, connect=min(5.0, config.timeout_s))
    client = factory(
        timeout=timeout,
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )
    return client, timeout


def completion_from_openai_body(
    body: dict[str, Any],
    *,
    provider: str,
    model: str,
    rate_limits: RateLimitHeaders | None = None,
) -> Completion:
    """A `Completion` from an OpenAI `chat.completion` body, or the error the body amounts to.

    A missing or unfinished choice, or missing usage, is `Truncated`: the caller may retry, but
    must never store it as an answer. A content-filter finish is `ContentFiltered`. `model` is
    the target model jobgate asked for (pricing is keyed on it), not the dated name an
    upstream may echo back; the body keeps the upstream's own.
    """
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, dict):
        raise Truncated(f"{provider} answered without any choice", provider=provider)
    finish_reason = first.get("finish_reason")
    if finish_reason == "content_filter":
        raise ContentFiltered(f"{provider}'s content filter stopped the answer", provider=provider)
    if finish_reason not in TERMINAL_FINISH_REASONS:
        raise Truncated(
            f"{provider} answered without a terminal finish reason (finish_reason={finish_reason!r})",
            provider=provider,
        )
    usage = body.get("usage")
    input_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    output_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
        raise Truncated(f"{provider} answered without token usage", provider=provider)
    return Completion(
        body=body,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason=str(finish_reason),
        provider=provider,
        model=model,
        rate_limits=rate_limits,
    )


def header_int(value: str | None) -> int | None:
    """A count from a response header (`"4999"`, or `"4999.0"` from some compatible servers);
    None when absent or unreadable, so one odd header never fails a good answer."""
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def utc_now() -> datetime:
    """The wall clock adapters read by default (resets and Retry-After dates are wall-clock
    times); each adapter takes another `now` for tests."""
    return datetime.now(UTC)
