"""The adapter for OpenAI and every server that speaks its chat-completions wire format.

It owns one `openai.AsyncOpenAI` client (`base.sdk_client`: one aiohttp connection pool shared
by every call in flight on the process's event loop) with the SDK's own retries off, since
jobgate decides retries; calls go through the SDK's generic `post` (`base.post_raw`).
The request is forwarded as the client sent it, minus unset parameters; the answer is the
response body exactly as the upstream sent it, read as a plain dict (the SDK's
`ChatCompletion` model is never built), plus the `x-ratelimit-*` headers read into
`RateLimitHeaders` (their reset values are Go durations such as `6m0s`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import openai

from core.config import ProviderConfig
from core.domain.chat import CHAT_FIELDS, ChatRequest, Completion, RateLimitHeaders
from core.domain.relay import Relay, RelayClosed
from core.errors import ClientDisconnected, Truncated, Unsupported
from core.providers.base import (
    call_timeout,
    completion_from_openai_body,
    header_int,
    json_object_body,
    post_raw,
    post_stream,
    sdk_client,
    utc_now,
)
from core.providers.errors import SdkErrorTypes, translate_sdk_error

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_FORWARDED = CHAT_FIELDS - {"model", "messages"}

SDK_ERRORS = SdkErrorTypes(
    timeout=openai.APITimeoutError, connection=openai.APIConnectionError, status=openai.APIStatusError
)
_GO_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class OpenAIProvider:
    """A provider of kind `openai`: `POST {base_url}/chat/completions` through the official SDK."""

    kind = "openai"

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
        self.client = self._make_client(config, max_connections)

    def _make_client(self, config: ProviderConfig, max_connections: int) -> openai.AsyncOpenAI:
        """The SDK client calls go through (a subclass speaking a dialect makes its own)."""
        return sdk_client(
            openai.AsyncOpenAI,
            openai.DefaultAioHttpClient,
            config,
            max_connections,
            default_base_url=DEFAULT_BASE_URL,
        )

    async def complete(self, request: ChatRequest, model: str, *, relay: Relay | None = None) -> Completion:
        arguments: dict[str, Any] = {
            "model": model,
            "messages": request.messages,
            **{
                key: value for key, value in request.params.items() if key in _FORWARDED and value is not None
            },
        }
        if relay is not None:
            return await self._stream(arguments, model, relay)
        try:
            response = await post_raw(self.client, "/chat/completions", arguments, self._timeout)
        except openai.OpenAIError as exc:
            raise translate_sdk_error(
                exc, SDK_ERRORS, provider=self.name, now=self._now(), timeout_s=self._timeout_s
            ) from exc
        except ValueError as exc:
            # Raised by the SDK itself before anything is sent (an API key that cannot go in a header,
            # for one); it stays the Truncated it has always been counted as here. Its text may
            # quote that header, key and all, so only its class is named.
            raise Truncated(
                f"{self.name}: the SDK could not make the call ({type(exc).__name__})", provider=self.name
            ) from exc
        return completion_from_openai_body(
            json_object_body(response, provider=self.name),
            provider=self.name,
            model=model,
            rate_limits=openai_rate_limits(response.headers),
        )

    async def _stream(self, arguments: dict[str, Any], model: str, relay: Relay) -> Completion:
        """The call streamed: each chunk relayed as it comes, the whole answer assembled and
        returned as a non-streamed call's would be (usage asked for, to record the job)."""
        answer = _Assembled()
        try:
            body = {**arguments, "stream": True, "stream_options": {"include_usage": True}}
            stream = await post_stream(
                self.client, "/chat/completions", body, self._timeout, stream_cls=openai.AsyncStream[object]
            )
            async with stream:
                async for data in stream:
                    answer.add(data)
                    await relay.send(data)
        except RelayClosed as exc:
            raise ClientDisconnected(
                f"{self.name}: the client went away mid-stream", provider=self.name
            ) from exc
        except openai.OpenAIError as exc:
            raise translate_sdk_error(
                exc, SDK_ERRORS, provider=self.name, now=self._now(), timeout_s=self._timeout_s
            ) from exc
        return completion_from_openai_body(
            answer.body(),
            provider=self.name,
            model=model,
            rate_limits=openai_rate_limits(stream.response.headers),
        )

    def refuses(self, request: ChatRequest) -> Unsupported | None:
        """Extended thinking asked in Anthropic's shape, which an OpenAI-compatible upstream
        cannot honour; anything else in OpenAI's shape is forwarded as it is."""
        thinking = (request.anthropic or {}).get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
            return Unsupported(
                f"{self.name}: extended thinking needs an Anthropic target",
                param="thinking",
                provider=self.name,
            )
        return None

    async def close(self) -> None:
        await self.client.close()


class _Assembled:
    """A streamed answer put back together as the `chat.completion` it amounts to."""

    def __init__(self) -> None:
        self.first: dict[str, Any] = {}
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self.first = self.first or chunk
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            self.text.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(
                    int(call.get("index") or 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.usage = chunk.get("usage") or self.usage

    def body(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.calls:
            message["tool_calls"] = [self.calls[index] for index in sorted(self.calls)]
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason, "logprobs": None}
        return {
            "id": self.first.get("id"),
            "object": "chat.completion",
            "created": self.first.get("created"),
            "model": self.first.get("model"),
            "choices": [choice],
            "usage": self.usage,
        }


def openai_rate_limits(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """The `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` headers, or None when none is sent."""
    limits = RateLimitHeaders(
        remaining_requests=header_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=header_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_go_duration_s(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_go_duration_s(headers.get("x-ratelimit-reset-tokens")),
    )
    return None if limits == RateLimitHeaders() else limits


def parse_go_duration_s(text: str | None) -> float | None:
    """Seconds in a Go `time.Duration` string (`12ms`, `6m0s`, `1h2m3.5s`); a bare number is
    taken as seconds, as some OpenAI-compatible servers send. None when absent or unreadable."""
    if text is None:
        return None
    text = text.strip()
    if _GO_DURATION.fullmatch(text):
        return sum(float(number) * _GO_UNIT_S[unit] for number, unit in _GO_DURATION_PART.findall(text))
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
