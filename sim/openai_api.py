"""The OpenAI chat completions dialect (`POST /v1/chat/completions`), shaped as openai 3.x reads it.

Requests need `model` and a non-empty `messages` list; `max_completion_tokens` (or the older
`max_tokens`), `stop` (a string or a list) and `tools` (the first function is the one called)
are honoured, everything else is accepted and ignored; `stream: true` answers with SSE chunks
(`sim.streaming`). Answers carry `x-request-id`, and, when the model has limits,
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go-style reset durations ("12ms",
"1.5s", "6m0s"). Errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

from sim.answer import Answer, Finish
from sim.knobs import DEFAULT_ORGANIZATION
from sim.limits import BucketState, LimitVerdict
from sim.streaming import openai_events
from sim.tokens import last_user_text, prompt_tokens
from sim.wire import ChatRequest, Headers, SimError, plain_number

_FINISH_REASONS = {
    Finish.END: "stop",
    Finish.STOP_SEQUENCE: "stop",
    Finish.LENGTH: "length",
    Finish.TOOL_CALL: "tool_calls",
}

_DEFAULT_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "You didn't provide an API key. You need to provide your API key in an Authorization header"
        " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    ),
    404: ("invalid_request_error", "unknown_url", "Unknown request URL."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached."),  # named as _limit_message does
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    529: ("server_error", None, "Overloaded"),
}


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, to the millisecond rounded up: "0s", "12ms", "1.5s", "6m0s"."""
    total_ms = math.ceil(seconds * 1000 - 1e-6)
    if total_ms <= 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    secs = f"{rest_ms // 1000}.{rest_ms % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _bad(message: str, param: str | None) -> SimError:
    return SimError(400, message, param)


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"Invalid '{param}': expected an integer of at least 1, got {value!r}.", param)
        return value
    return None


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _bad("Invalid 'stop': expected a string or an array of strings.", "stop")


def _first_tool_name(tools: Any) -> str | None:
    if tools is None or tools == []:
        return None
    try:
        name = tools[0]["function"]["name"]
    except (TypeError, KeyError, IndexError):
        name = None
    if not isinstance(name, str):
        raise _bad("Invalid 'tools[0]': expected {'type': 'function', 'function': {'name': ...}}.", "tools")
    return name


class OpenAIDialect:
    request_id_header = b"x-request-id"
    retry_after_header = True

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        return key if scheme.lower() == "bearer" and key else None

    def parse(self, body: Any) -> ChatRequest:
        if not isinstance(body, dict):
            raise _bad("We could not parse the JSON body of your request: expected an object.", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("You must provide a model parameter.", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _bad("Invalid 'messages': expected a non-empty array of message objects.", "messages")
        options = body.get("stream_options")
        return ChatRequest(
            model=model,
            user_text=last_user_text(messages),
            prompt_tokens=prompt_tokens(messages),
            max_tokens=_max_tokens(body),
            stop=_stop(body.get("stop")),
            tool_name=_first_tool_name(body.get("tools")),
            stream=bool(body.get("stream")),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        )

    def stream_events(self, request: ChatRequest, answer: Answer) -> list[bytes]:
        return openai_events(request, answer)

    def success_body(self, request: ChatRequest, answer: Answer, request_id: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text,
            "refusal": None,
            "annotations": [],
        }
        if answer.finish is Finish.TOOL_CALL:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{os.urandom(12).hex()}",
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": answer.tool_arguments_json},
                }
            ]
        return {
            "id": f"chatcmpl-{os.urandom(14).hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _FINISH_REASONS[answer.finish],
                }
            ],
            "usage": {
                "prompt_tokens": request.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": request.prompt_tokens + answer.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        }

    def error_body(
        self,
        error: SimError,
        request: ChatRequest | None,
        request_id: str,
        *,
        organization: str = DEFAULT_ORGANIZATION,
    ) -> dict[str, Any]:
        default_type = "server_error" if error.status >= 500 else "invalid_request_error"
        kind, code, message = _DEFAULT_ERRORS.get(error.status, (default_type, None, "Request failed."))
        model = request.model if request else "this model"
        verdict = error.limit
        if verdict is not None and verdict.limited_by is not None:
            kind, code = verdict.limited_by, "rate_limit_exceeded"
            message = _limit_message(verdict, model, organization)
        elif error.status == 429:
            message = (
                f"Rate limit reached for {model} in organization {organization} on requests per min"
                " (RPM): a failure injected by the simulator."
            )
        return {
            "error": {
                "message": error.message or message,
                "type": kind,
                "param": error.param,
                "code": code,
            }
        }

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        headers: Headers = []
        for kind, state in (("requests", verdict.requests), ("tokens", verdict.tokens)):
            if state is not None:
                headers += [
                    (
                        f"x-ratelimit-limit-{kind}".encode(),
                        str(plain_number(state.limit_per_minute)).encode(),
                    ),
                    (f"x-ratelimit-remaining-{kind}".encode(), str(state.remaining_per_minute).encode()),
                    (f"x-ratelimit-reset-{kind}".encode(), go_duration(state.reset_s).encode()),
                ]
        return headers


def _limit_message(verdict: LimitVerdict, model: str, organization: str) -> str:
    state: BucketState | None = verdict.requests if verdict.limited_by == "requests" else verdict.tokens
    unit = "requests per min (RPM)" if verdict.limited_by == "requests" else "tokens per min (TPM)"
    limit = plain_number(state.limit_per_minute) if state else 0
    used = max(0, math.ceil(state.limit_per_minute) - state.remaining_per_minute) if state else 0
    return (
        f"Rate limit reached for {model} in organization {organization} on {unit}: Limit {limit},"
        f" Used {used}, Requested {verdict.requested}."
        f" Please try again in {go_duration(verdict.retry_after_s)}."
    )
