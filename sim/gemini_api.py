"""Gemini's OpenAI-compatible dialect (`POST /v1beta/openai/chat/completions`), as Google answers it.

Requests are OpenAI's (the key as `Authorization: Bearer`), and so are answers, minus the
fields Google leaves out (`system_fingerprint`, `service_tier`, `refusal`, token details).
Gemini sends no rate-limit headers and no `retry-after`: its errors are a JSON list holding
one Google RPC status, `[{"error": {"code": 429, "message": …, "status": "RESOURCE_EXHAUSTED",
"details": [QuotaFailure, Help, {"@type": "type.googleapis.com/google.rpc.RetryInfo",
"retryDelay": "12s"}]}}]`, where `retryDelay` (whole seconds, rounded up) is the only word on
how long to wait. Other statuses carry their RPC names (`INVALID_ARGUMENT`, `UNAUTHENTICATED`,
`NOT_FOUND`, `INTERNAL`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from sim.answer import Answer
from sim.knobs import DEFAULT_ORGANIZATION
from sim.limits import LimitVerdict
from sim.openai_api import OpenAIDialect
from sim.wire import ChatRequest, Headers, SimError

_TYPE = "type.googleapis.com/google.rpc."
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    401: "Request had invalid authentication credentials. Expected an API key.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


class GeminiDialect:
    """OpenAI's requests and streams (`sim.openai_api`), Google's answers and errors."""

    request_id_header = b"x-request-id"
    retry_after_header = False

    def __init__(self) -> None:
        self._openai = OpenAIDialect()

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return self._openai.api_key(headers)

    def parse(self, body: Any) -> ChatRequest:
        return self._openai.parse(body)

    def stream_events(self, request: ChatRequest, answer: Answer) -> list[bytes]:
        return self._openai.stream_events(request, answer)

    def success_body(self, request: ChatRequest, answer: Answer, request_id: str) -> dict[str, Any]:
        body = self._openai.success_body(request, answer, request_id)
        body["id"] = os.urandom(12).hex()
        for name in ("service_tier", "system_fingerprint"):
            del body[name]
        for choice in body["choices"]:
            del choice["logprobs"]
            for name in ("refusal", "annotations"):
                choice["message"].pop(name, None)
        usage = body["usage"]
        body["usage"] = {name: usage[name] for name in ("completion_tokens", "prompt_tokens", "total_tokens")}
        return body

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        return []

    def error_body(
        self,
        error: SimError,
        request: ChatRequest | None,
        request_id: str,
        *,
        organization: str = DEFAULT_ORGANIZATION,
    ) -> list[dict[str, Any]]:
        status = _STATUS_NAMES.get(error.status, "UNKNOWN")
        model = request.model if request else "unknown"
        details: list[dict[str, Any]] = []
        if error.status == 429:
            message = _quota_message(error.limit, model, organization)
            details = _quota_details(error, model)
        else:
            message = error.message or _MESSAGES.get(error.status, f"Request failed with status {status}.")
        rpc_status = {"code": error.status, "message": message, "status": status}
        if details:
            rpc_status["details"] = details
        return [{"error": rpc_status}]


def _metric(verdict: LimitVerdict | None) -> str:
    kind = "input_token_count" if verdict is not None and verdict.limited_by == "tokens" else "requests"
    return f"generativelanguage.googleapis.com/generate_content_paid_tier_{kind}"


def _quota_message(verdict: LimitVerdict | None, model: str, organization: str) -> str:
    return (
        "You exceeded your current quota, please check your plan and billing details. For more"
        " information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
        f"\n* Quota exceeded for metric: {_metric(verdict)}, model: {model}, project: {organization}"
    )


def _quota_details(error: SimError, model: str) -> list[dict[str, Any]]:
    verdict = error.limit
    state = None
    if verdict is not None:
        state = verdict.tokens if verdict.limited_by == "tokens" else verdict.requests
    violation = {
        "quotaMetric": _metric(verdict),
        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
        "quotaDimensions": {"location": "global", "model": model},
    }
    if state is not None:
        violation["quotaValue"] = str(math.ceil(state.limit_per_minute))
    details: list[dict[str, Any]] = [
        {"@type": f"{_TYPE}QuotaFailure", "violations": [violation]},
        {
            "@type": f"{_TYPE}Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if error.retry_after_s is not None:
        details.append({"@type": f"{_TYPE}RetryInfo", "retryDelay": f"{math.ceil(error.retry_after_s)}s"})
    return details
