"""Translation of provider SDK exceptions into jobgate's named upstream errors.

Both official SDKs raise a timeout error, a connection error, and a status error carrying
`.status_code`, `.response.headers` and the decoded error `.body`; this module maps them,
keyed on the HTTP status, onto `core.errors` (DESIGN.md principle 5), so every adapter
translates at one boundary with the same rules: which statuses are retryable, how long
`retry-after-ms` / `retry-after` ask us to wait, and which 400s are content-filter refusals.
The message kept is the upstream's own (the SDKs' prefixes dropped); no header is copied
into it, so an API key cannot leak through an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from core.errors import (
    AuthFailed,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    NotFoundUpstream,
    Overloaded,
    RateLimited,
    ServerError,
    UpstreamError,
    UpstreamTimeout,
)

# Error codes/types that mean "refused by a content filter" (Azure OpenAI: `content_filter`;
# OpenAI images and moderation: `content_policy_violation`).
_CONTENT_FILTER_MARKERS = ("content_filter", "content_policy")
_MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class SdkErrorTypes:
    """The exception classes of one SDK that translation must tell apart.

    `timeout` must be checked before `connection`: both SDKs derive it from their connection error.
    """

    timeout: type[Exception]
    connection: type[Exception]
    status: type[Exception]


def translate_sdk_error(
    exc: Exception,
    sdk: SdkErrorTypes,
    *,
    provider: str,
    now: datetime,
    timeout_s: float | None = None,
) -> UpstreamError:
    """The named error for an exception raised by an SDK call (the caller raises it `from exc`)."""
    refused = _refused_connection(exc)
    if refused is not None:
        return ConnectionFailed(f"cannot reach {provider}: {refused}", provider=provider)
    if isinstance(exc, sdk.timeout):
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        return UpstreamTimeout(f"{provider} did not answer{within}", provider=provider)
    if isinstance(exc, sdk.connection):
        cause = exc.__cause__ or exc
        return ConnectionFailed(f"cannot reach {provider}: {cause}", provider=provider)
    if isinstance(exc, sdk.status):
        response = getattr(exc, "response", None)
        return error_for_status(
            int(getattr(exc, "status_code", 0)),
            headers=getattr(response, "headers", {}),
            body=getattr(exc, "body", None),
            fallback_message=str(getattr(exc, "message", exc)),
            provider=provider,
            now=now,
        )
    # Anything else the SDK raises (a response it could not decode, a middleware failure) still
    # gets a name; it is retryable because nothing says the request itself was wrong.
    return ServerError(f"{provider}: {type(exc).__name__}: {exc}", provider=provider)


def _refused_connection(exc: BaseException) -> OSError | None:
    """The OS error (refused, unreachable, no such host) behind an SDK error, if one is. The
    SDKs' aiohttp transport reports every failed connect as a connect *timeout*; a connection
    the peer refused is a connection failure, and its message must not speak of waiting."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return cause
        cause = cause.__cause__
    return None


def error_for_status(
    status_code: int,
    *,
    headers: Mapping[str, str],
    body: object,
    fallback_message: str,
    provider: str,
    now: datetime,
) -> UpstreamError:
    """The named error for an HTTP error response from a provider."""
    kind = _error_type_for_status(status_code, body)
    message = upstream_message(body, fallback_message)
    if kind is AuthFailed:
        # The provider's words may quote the operator's key (masked, but its tail) or account;
        # they are the operator's business, and the job's error is the tenant's to read.
        message = (
            f"{provider} refused the gateway's credentials (HTTP {status_code}); an operator must check them"
        )
    return kind(
        message,
        status_code=status_code,
        retry_after_s=retry_after_s(headers, now),
        provider=provider,
    )


def _error_type_for_status(status_code: int, body: object) -> type[UpstreamError]:
    if status_code == 429:
        return RateLimited
    if status_code in (503, 529):
        return Overloaded
    if status_code in (408, 504):
        return UpstreamTimeout
    if status_code >= 500 or status_code == 409:
        # 409 is a conflict on the provider's side (both SDKs retry it), not a bad request.
        return ServerError
    if status_code in (401, 402, 403):
        # 402 is Anthropic's billing error: an account problem, like a revoked key.
        return AuthFailed
    if status_code == 404:
        return NotFoundUpstream
    if status_code == 400 and _mentions_content_filter(body):
        return ContentFiltered
    return BadRequest


def _error_object(body: object) -> Mapping[str, Any] | None:
    """The `error` object: OpenAI's SDK hands over `body["error"]`, Anthropic's the whole body."""
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error")
    return inner if isinstance(inner, Mapping) else body


def _mentions_content_filter(body: object) -> bool:
    error = _error_object(body)
    if error is None:
        return False
    details = error.get("details")
    labels = [error.get("code"), error.get("type")]
    if isinstance(details, Mapping):
        labels.append(details.get("error_code"))
    text = " ".join(str(label).lower() for label in labels if label is not None)
    return any(marker in text for marker in _CONTENT_FILTER_MARKERS)


def upstream_message(body: object, fallback: str) -> str:
    """The provider's own error message, or `fallback` (the SDK's text) when the body has none."""
    error = _error_object(body)
    message = error.get("message") if error is not None else None
    if not isinstance(message, str) or not message:
        message = body if isinstance(body, str) and body else fallback
    return message[:_MAX_MESSAGE_CHARS]


def retry_after_s(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds the provider asks us to wait: `retry-after-ms`, else `retry-after` (seconds or an
    HTTP-date), as both SDKs read them. None when absent or unreadable; never negative."""
    milliseconds = _finite_float(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return max(0.0, milliseconds / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite_float(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _finite_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
