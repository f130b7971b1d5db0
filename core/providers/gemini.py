"""The adapter for Gemini through its OpenAI-compatible endpoint.

Kind `gemini` is the `openai` kind (the same SDK client, request, answer, streaming) pointed at
`https://generativelanguage.googleapis.com/v1beta/openai/` unless `base_url` says otherwise, with
a Gemini API key as the bearer token. What differs is how Gemini fails. Its error body is a
Google RPC status, a JSON list of one `{"error": {"code", "message", "status", "details"}}` (or
that object alone), and a 429 (`RESOURCE_EXHAUSTED`) says how long to wait only in a
`google.rpc.RetryInfo` detail (`"retryDelay": "12s"`), never in a Retry-After header.
`gemini_error` reads both: the wait becomes the error's `retry_after_s` (so the provider is
paused fleet-wide for as long as Gemini asked), the RPC status and an `ErrorInfo` reason become
the upstream code in the operator's log, and a key Gemini refuses (a 400 whose reason is
`API_KEY_INVALID`) is `AuthFailed`, not the tenant's bad request. As everywhere, the message is
jobgate's own words (`core.providers.errors`), never Google's text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import openai

from core.config import ProviderConfig
from core.domain.chat import ChatRequest, Completion
from core.domain.relay import Relay
from core.errors import AuthFailed, UpstreamError
from core.providers.base import utc_now
from core.providers.errors import error_for_status
from core.providers.openai import OpenAIProvider

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# A google.protobuf.Duration in JSON: seconds with up to nine decimals and an `s`.
_DURATION = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)s")
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_KEY_REFUSED = "API_KEY_INVALID"


class GeminiProvider(OpenAIProvider):
    """A provider of kind `gemini`: Gemini's OpenAI-compatible chat completions."""

    kind = "gemini"

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        max_connections: int = 1000,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if config.base_url is None:
            config = config.model_copy(update={"base_url": DEFAULT_BASE_URL})
        super().__init__(name, config, max_connections=max_connections, now=now)

    async def complete(self, request: ChatRequest, model: str, *, relay: Relay | None = None) -> Completion:
        try:
            return await super().complete(request, model, relay=relay)
        except UpstreamError as error:
            answer = error.__cause__
            if not isinstance(answer, openai.APIStatusError):
                raise
            raise gemini_error(
                answer.status_code,
                headers=answer.response.headers,
                body=answer.body,
                provider=self.name,
                now=self._now(),
            ) from answer


def gemini_error(
    status_code: int, *, headers: Mapping[str, str], body: object, provider: str, now: datetime
) -> UpstreamError:
    """The named error for an error answer from Gemini (`body` as the openai SDK decoded it:
    the list, or the object inside `error`)."""
    status = _rpc_status(body)
    details = [d for d in status.get("details") or [] if isinstance(d, Mapping)]
    name = _name(status.get("status"))
    reason = next((_name(d.get("reason")) for d in details if d.get("@type") == _ERROR_INFO), None)
    upstream = {"type": name, "code": reason}
    error = error_for_status(
        status_code, headers=headers, body={"error": upstream}, provider=provider, now=now
    )
    if reason == _KEY_REFUSED:
        message = (
            f"{provider} answered {status_code} (the gateway's credentials were refused;"
            " an operator must check them)"
        )
        if error.request_id:
            message += f", request id {error.request_id}"
        error = AuthFailed(
            message,
            status_code=status_code,
            provider=provider,
            request_id=error.request_id,
            upstream_code=error.upstream_code,
        )
    if error.retry_after_s is None:
        error.retry_after_s = _retry_delay_s(details)
    return error


def _rpc_status(body: object) -> Mapping[str, Any]:
    """The `{"code", "message", "status", "details"}` object, wherever the body holds it."""
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    return body if isinstance(body, Mapping) else {}


def _name(value: object) -> str | None:
    """An RPC status or reason (`RESOURCE_EXHAUSTED`, `API_KEY_INVALID`); anything else is
    dropped, as free text from the provider never reaches a log or a tenant."""
    return value if isinstance(value, str) and _NAME.fullmatch(value) else None


def _retry_delay_s(details: list[Mapping[str, Any]]) -> float | None:
    """Seconds in the `RetryInfo` detail's `retryDelay`, a protobuf Duration (`"12s"`,
    `"1.5s"`); None when there is none or it is unreadable."""
    for detail in details:
        delay = detail.get("retryDelay")
        if detail.get("@type") == _RETRY_INFO and isinstance(delay, str):
            match = _DURATION.fullmatch(delay.strip())
            if match is not None:
                return float(match.group(1))
    return None
