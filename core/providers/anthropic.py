"""The adapter for Anthropic's Messages API (`POST {base_url}/v1/messages`).

It owns one `anthropic.AsyncAnthropic` client (`base.sdk_client`: one aiohttp connection pool
shared by every call in flight on the process's event loop) with the SDK's own retries off,
since jobgate decides retries; calls go through the SDK's generic `post` (`base.post_raw`).
Requests and answers are translated to and from the OpenAI shape by
`core.providers.anthropic_messages`, the answer straight from the raw JSON message (the SDK's
`Message` model is never built); this module does the call, the error boundary, and reads the
`anthropic-ratelimit-*` headers (whose reset values are RFC 3339 timestamps) into
`RateLimitHeaders` as seconds from now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import anthropic

from core.config import ProviderConfig
from core.domain.chat import ChatRequest, Completion, RateLimitHeaders
from core.domain.relay import Relay, RelayClosed, chunks_of
from core.errors import ClientDisconnected, Truncated, Unsupported
from core.providers.anthropic_messages import (
    anthropic_request,
    json_tool_name,
    openai_body,
    unsupported_parameter,
)
from core.providers.base import (
    call_timeout,
    completion_from_openai_body,
    header_int,
    json_object_body,
    post_raw,
    sdk_client,
    utc_now,
)
from core.providers.errors import SdkErrorTypes, translate_sdk_error

DEFAULT_BASE_URL = "https://api.anthropic.com"

SDK_ERRORS = SdkErrorTypes(
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
    status=anthropic.APIStatusError,
)


class AnthropicProvider:
    """A provider of kind `anthropic`, called through the official SDK."""

    kind = "anthropic"

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        max_connections: int = 1000,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self._now = now
        self._timeout_s = config.timeout_s
        self._timeout = call_timeout(config)
        self.client = sdk_client(
            anthropic.AsyncAnthropic,
            anthropic.DefaultAioHttpClient,
            config,
            max_connections,
            default_base_url=DEFAULT_BASE_URL,
        )

    async def complete(self, request: ChatRequest, model: str, *, relay: Relay | None = None) -> Completion:
        """With a `relay`, the whole answer is relayed at its end, as chunks (the Anthropic
        event stream is not translated token by token yet)."""
        completion = await self._complete(request, model)
        if relay is not None:
            try:
                for chunk in chunks_of(completion.body):
                    await relay.send(chunk)
            except RelayClosed as exc:
                raise ClientDisconnected(f"{self.name}: the client went away", provider=self.name) from exc
        return completion

    async def _complete(self, request: ChatRequest, model: str) -> Completion:
        # Sent as the API takes it: the sampling parameters the SDK's `create` no longer takes
        # as arguments are plain body fields, and no SDK-side check refuses a large `max_tokens`
        # without streaming before anything is sent.
        arguments = anthropic_request(request, model, provider=self.name)
        try:
            response = await post_raw(self.client, "/v1/messages", arguments, self._timeout)
        except anthropic.AnthropicError as exc:
            raise translate_sdk_error(
                exc, SDK_ERRORS, provider=self.name, now=self._now(), timeout_s=self._timeout_s
            ) from exc
        except ValueError as exc:
            # Raised by the SDK itself before anything is sent (an API key that cannot go in a
            # header, for one); it stays the Truncated it has always been counted as here.
            raise Truncated(
                f"{self.name}: the SDK could not make the call: {exc}", provider=self.name
            ) from exc
        message = json_object_body(response, provider=self.name)
        now = self._now()
        return completion_from_openai_body(
            openai_body(
                message,
                provider=self.name,
                created_s=int(now.timestamp()),
                json_tool=None if request.anthropic is not None else json_tool_name(request),
            ),
            provider=self.name,
            model=model,
            rate_limits=anthropic_rate_limits(response.headers, now),
        )

    def refuses(self, request: ChatRequest) -> Unsupported | None:
        return unsupported_parameter(request, provider=self.name)

    async def close(self) -> None:
        await self.client.close()


def anthropic_rate_limits(headers: Mapping[str, str], now: datetime) -> RateLimitHeaders | None:
    """The `anthropic-ratelimit-{requests,tokens}-{remaining,reset}` headers, or None when none is sent."""
    limits = RateLimitHeaders(
        remaining_requests=header_int(headers.get("anthropic-ratelimit-requests-remaining")),
        remaining_tokens=header_int(headers.get("anthropic-ratelimit-tokens-remaining")),
        reset_requests_s=parse_reset_timestamp_s(headers.get("anthropic-ratelimit-requests-reset"), now),
        reset_tokens_s=parse_reset_timestamp_s(headers.get("anthropic-ratelimit-tokens-reset"), now),
    )
    return None if limits == RateLimitHeaders() else limits


def parse_reset_timestamp_s(text: str | None, now: datetime) -> float | None:
    """Seconds from `now` until an RFC 3339 timestamp (0 if it has passed); None when absent
    or unreadable. A timestamp without an offset is taken as UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
