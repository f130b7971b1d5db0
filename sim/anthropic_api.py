"""The Anthropic messages dialect (`POST /v1/messages`), shaped as anthropic 2.x reads it.

The key may come as `x-api-key` (SDKs up to 1.17, curl) or `Authorization: Bearer` (2.x);
`anthropic-version` and `anthropic-beta` are ignored. Requests need `model`, `max_tokens` and a
non-empty `messages` list; `system` (a string or a list of text blocks), `stop_sequences` and
`tools` (the first one is the one called) are honoured; `stream: true` answers
with SSE events (`sim.streaming`). Answers
carry `request-id` and, when the model has limits, `anthropic-ratelimit-{requests,tokens}-
{limit,remaining,reset}` with RFC 3339 reset times rounded up to the second. Errors use the body
`{"type": "error", "error": {"type", "message"}, "request_id"}`; 529 is `overloaded_error`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sim.answer import Answer, Finish
from sim.knobs import DEFAULT_ORGANIZATION
from sim.limits import LimitVerdict
from sim.streaming import anthropic_events
from sim.tokens import last_user_text, prompt_tokens
from sim.wire import ChatRequest, Headers, SimError, plain_number

_STOP_REASONS = {
    Finish.END: "end_turn",
    Finish.STOP_SEQUENCE: "stop_sequence",
    Finish.LENGTH: "max_tokens",
    Finish.TOOL_CALL: "tool_use",
}

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "Missing API key: send x-api-key or Authorization: Bearer."),
    402: ("billing_error", "Billing error."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limit exceeded."),  # named as _limit_message does
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


def rfc3339_after(seconds: float) -> str:
    """The UTC time `seconds` from now, rounded up to the whole second, as "2025-10-25T12:00:00Z"."""
    moment = datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bad(message: str) -> SimError:
    return SimError(400, message)


def _system(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in value):
        return value
    raise _bad("system: Input should be a string or a list of text blocks")


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _bad("stop_sequences: Input should be a list of strings")


def _first_tool_name(tools: Any) -> str | None:
    if tools is None or tools == []:
        return None
    name = tools[0].get("name") if isinstance(tools, list) and isinstance(tools[0], dict) else None
    if not isinstance(name, str):
        raise _bad("tools.0.name: Field required")
    return name


class AnthropicDialect:
    request_id_header = b"request-id"
    retry_after_header = True

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        key = headers.get("x-api-key", "").strip()
        if key:
            return key
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        bearer = bearer.strip()
        return bearer if scheme.lower() == "bearer" and bearer else None

    def parse(self, body: Any) -> ChatRequest:
        if not isinstance(body, dict):
            raise _bad("Request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("model: Field required")
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _bad("max_tokens: Field required (an integer of at least 1)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _bad("messages: Input should be a non-empty list of messages")
        return ChatRequest(
            model=model,
            user_text=last_user_text(messages),
            prompt_tokens=prompt_tokens(messages, _system(body.get("system"))),
            max_tokens=max_tokens,
            stop=_stop_sequences(body.get("stop_sequences")),
            tool_name=_first_tool_name(body.get("tools")),
            stream=bool(body.get("stream")),
        )

    def stream_events(self, request: ChatRequest, answer: Answer) -> list[bytes]:
        return anthropic_events(request, answer)

    def success_body(self, request: ChatRequest, answer: Answer, request_id: str) -> dict[str, Any]:
        if answer.finish is Finish.TOOL_CALL:
            content: list[dict[str, Any]] = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{os.urandom(12).hex()}",
                    "name": answer.tool_name,
                    "input": answer.tool_input,
                }
            ]
        else:
            content = [{"type": "text", "text": answer.text}]
        return {
            "id": f"msg_{os.urandom(12).hex()}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": content,
            "stop_reason": _STOP_REASONS[answer.finish],
            "stop_sequence": answer.stop_sequence,
            "usage": {
                "input_tokens": request.prompt_tokens,
                "output_tokens": answer.completion_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
        }

    def error_body(
        self,
        error: SimError,
        request: ChatRequest | None,
        request_id: str,
        *,
        organization: str = DEFAULT_ORGANIZATION,
    ) -> dict[str, Any]:
        default_type = "api_error" if error.status >= 500 else "invalid_request_error"
        kind, message = _DEFAULT_ERRORS.get(error.status, (default_type, "Request failed."))
        verdict = error.limit
        if verdict is not None and verdict.limited_by is not None:
            message = _limit_message(verdict, organization)
        elif error.status == 429:
            message = (
                f"This request would exceed the rate limit for your organization ({organization})"
                " (a failure injected by the simulator)."
            )
        return {
            "type": "error",
            "error": {"type": kind, "message": error.message or message},
            "request_id": request_id,
        }

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        headers: Headers = []
        for kind, state in (("requests", verdict.requests), ("tokens", verdict.tokens)):
            if state is not None:
                prefix = f"anthropic-ratelimit-{kind}-"
                headers += [
                    (f"{prefix}limit".encode(), str(plain_number(state.limit_per_minute)).encode()),
                    (f"{prefix}remaining".encode(), str(state.remaining_per_minute).encode()),
                    (f"{prefix}reset".encode(), rfc3339_after(state.reset_s).encode()),
                ]
        return headers


def _limit_message(verdict: LimitVerdict, organization: str) -> str:
    state = verdict.requests if verdict.limited_by == "requests" else verdict.tokens
    limit = plain_number(state.limit_per_minute) if state else 0
    unit = "requests" if verdict.limited_by == "requests" else "tokens"
    return (
        f"This request would exceed the rate limit for your organization ({organization}) of {limit}"
        f" {unit} per minute."
        " For details, refer to: https://docs.claude.com/en/api/rate-limits."
    )
