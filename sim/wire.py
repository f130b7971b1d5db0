"""The seam between the request pipeline and the two wire formats it speaks.

A `Dialect` (OpenAI chat completions, Anthropic messages, Azure OpenAI deployments, Gemini's
OpenAI-compatible endpoint) reads the caller's API key, turns a JSON body into a
provider-neutral `ChatRequest`, and renders answers, errors and rate-limit headers in its
provider's exact shape. The pipeline in `sim.app` only ever sees these types, so
adding a provider is one new module implementing `Dialect`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sim.answer import Answer
from sim.limits import LimitVerdict

Headers = list[tuple[bytes, bytes]]
# An error answer's JSON: an object for most providers, a list of one status for Gemini.
ErrorBody = dict[str, Any] | list[Any]


@dataclass(frozen=True)
class ChatRequest:
    model: str
    user_text: str
    prompt_tokens: int
    max_tokens: int | None
    stop: tuple[str, ...]
    tool_name: str | None
    stream: bool = False
    include_usage: bool = False  # OpenAI's stream_options.include_usage


@dataclass
class SimError(Exception):
    """An error answer: its status, an optional message (else the dialect's usual one), and details."""

    status: int
    message: str | None = None
    param: str | None = None
    limit: LimitVerdict | None = None
    # The provider's error code when the dialect names one (Azure's `content_filter`).
    code: str | None = None
    # How long the caller is asked to wait (a 429 or 503), for dialects that say it in the body.
    retry_after_s: float | None = None


class Dialect(Protocol):
    request_id_header: bytes
    # Whether a 429/503/529 carries `retry-after` and `retry-after-ms` headers (Gemini puts its
    # wait in the body instead).
    retry_after_header: bool

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """The caller's API key, or None when the request carries none."""
        ...

    def parse(self, body: Any) -> ChatRequest:
        """The request's meaning; raises SimError(400) naming the offending field."""
        ...

    def success_body(self, request: ChatRequest, answer: Answer, request_id: str) -> dict[str, Any]: ...

    def stream_events(self, request: ChatRequest, answer: Answer) -> list[bytes]:
        """The streamed answer's SSE events, in order."""
        ...

    def error_body(
        self, error: SimError, request: ChatRequest | None, request_id: str, *, organization: str = ...
    ) -> ErrorBody:
        """The error answer; a 429 names `organization` as the provider names the caller's."""
        ...

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        """Rate-limit headers for a verdict (none for an unlimited model)."""
        ...


def plain_number(value: float) -> int | float:
    """A limit as a header shows it: 600, not 600.0."""
    return int(value) if float(value).is_integer() else value
