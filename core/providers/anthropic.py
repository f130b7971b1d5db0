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

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import anthropic
from anthropic import AsyncStream
from anthropic.types import RawMessageStreamEvent

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
        """With a `relay`, the call is streamed and each event relayed as an OpenAI chunk
        (`_Relayed`); a JSON answer (`response_format`, a forced tool) is relayed whole at its
        end, since its text is the tool's input."""
        if relay is None:
            return await self._complete(request, model)
        if request.anthropic is None and json_tool_name(request) is not None:
            completion = await self._complete(request, model)
            await _send_all(relay, chunks_of(completion.body), provider=self.name)
            return completion
        arguments = {**anthropic_request(request, model, provider=self.name), "stream": True}
        relayed = _Relayed(relay, provider=self.name, created_s=int(self._now().timestamp()))
        try:
            stream = await self.client.post(
                "/v1/messages",
                cast_to=cast(type[Any], RawMessageStreamEvent),  # a union of event types
                body=arguments,
                options={"timeout": self._timeout},
                stream=True,
                stream_cls=AsyncStream[RawMessageStreamEvent],
            )
            async with stream:
                async for event in stream:
                    await relayed.add(event.to_dict())
        except RelayClosed as exc:
            raise ClientDisconnected(
                f"{self.name}: the client went away mid-stream", provider=self.name
            ) from exc
        except anthropic.AnthropicError as exc:
            raise translate_sdk_error(
                exc, SDK_ERRORS, provider=self.name, now=self._now(), timeout_s=self._timeout_s
            ) from exc
        body = openai_body(relayed.message(), provider=self.name, created_s=relayed.created_s)
        completion = completion_from_openai_body(
            body,
            provider=self.name,
            model=model,
            rate_limits=anthropic_rate_limits(stream.response.headers, self._now()),
        )
        await _send_all(relay, chunks_of(body)[1:], provider=self.name)  # the finish and the usage
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
            # header, for one); it stays the Truncated it has always been counted as here. Its
            # text may quote that header, key and all, so only its class is named.
            raise Truncated(
                f"{self.name}: the SDK could not make the call ({type(exc).__name__})", provider=self.name
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


async def _send_all(relay: Relay, chunks: list[dict[str, Any]], *, provider: str) -> None:
    try:
        for chunk in chunks:
            await relay.send(chunk)
    except RelayClosed as exc:
        raise ClientDisconnected(f"{provider}: the client went away", provider=provider) from exc


class _Relayed:
    """Anthropic's stream events relayed as OpenAI chunks as they come (text deltas as content,
    tool_use blocks as tool calls; thinking is not relayed), and the message put back together
    for the job's record."""

    def __init__(self, relay: Relay, *, provider: str, created_s: int) -> None:
        self.relay = relay
        self.provider = provider
        self.created_s = created_s
        self._message: dict[str, Any] = {}
        self._blocks: list[dict[str, Any]] = []
        self._tools = 0

    async def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self._message = dict(event.get("message") or {})
            await self._send({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = dict(event.get("content_block") or {})
            self._blocks.append(block)
            if block.get("type") == "tool_use":
                block["partial_json"] = ""
                call = {"index": self._tools, "id": block.get("id"), "type": "function"}
                self._tools += 1
                await self._send(
                    {"tool_calls": [{**call, "function": {"name": block.get("name"), "arguments": ""}}]}
                )
        elif kind == "content_block_delta" and self._blocks:
            await self._delta(self._blocks[-1], event.get("delta") or {})
        elif kind == "message_delta":
            self._message.update(event.get("delta") or {})
            self._message["usage"] = {**(self._message.get("usage") or {}), **(event.get("usage") or {})}

    async def _delta(self, block: dict[str, Any], delta: dict[str, Any]) -> None:
        if delta.get("type") == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
            await self._send({"content": delta.get("text", "")})
        elif delta.get("type") == "input_json_delta":
            block["partial_json"] += delta.get("partial_json", "")
            call = {"index": self._tools - 1, "function": {"arguments": delta.get("partial_json", "")}}
            await self._send({"tool_calls": [call]})

    async def _send(self, delta: dict[str, Any]) -> None:
        await self.relay.send(
            {
                "id": f"chatcmpl-{self._message.get('id')}",
                "object": "chat.completion.chunk",
                "created": self.created_s,
                "model": self._message.get("model"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
            }
        )

    def message(self) -> dict[str, Any]:
        """The whole message, as a non-streamed call would have returned it."""
        blocks = []
        for block in self._blocks:
            if block.get("type") == "tool_use":
                arguments = block.pop("partial_json", "") or "{}"
                try:
                    block["input"] = json.loads(arguments)
                except ValueError as exc:
                    raise Truncated(
                        f"{self.provider} streamed tool input that is not JSON", provider=self.provider
                    ) from exc
            blocks.append(block)
        return {**self._message, "content": blocks}


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
