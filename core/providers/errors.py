"""Translation of provider SDK exceptions into jobgate's named upstream errors.

Both official SDKs raise a timeout error, a connection error, and a status error carrying
`.status_code`, `.response.headers` and the decoded error `.body`; this module maps them,
keyed on the HTTP status, onto `core.errors` (DESIGN.md principle 5), so every adapter
translates at one boundary with the same rules: which statuses are retryable, how long
`retry-after-ms` / `retry-after` ask us to wait, and which 400s are content-filter refusals.

The message is jobgate's own wording for the error type, with the provider's config name, the
HTTP status and the upstream's request id (`x-request-id`, Anthropic's `request-id`), never
the provider's text: OpenAI's and Anthropic's 429s name the operator's organisation and its
limits, a 401 quotes the tail of the key, and a connection error names internal hosts, while
the message is stored on the job, answered on the sync path and sent in webhooks. Of the
body only identifier-shaped fields survive: a `param` a 400 names (the tenant's own field),
and the error's `type`/`code` (`upstream_code`), which `core.services.upstream` logs for the
operator beside the status and request id.
"""

from __future__ import annotations

import errno
import math
import os
import re
import socket
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
# What a request id, a parameter name or an error code looks like; anything else from the
# provider (free text, which may name an organisation or a host) is not repeated.
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,100}")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id")

# How each named error reads in a message: "<provider> answered <status> (<what>)".
_WHAT: dict[type[UpstreamError], str] = {
    RateLimited: "rate limited",
    Overloaded: "overloaded",
    UpstreamTimeout: "timed out",
    ServerError: "server error",
    AuthFailed: "the gateway's credentials were refused; an operator must check them",
    NotFoundUpstream: "not found",
    ContentFiltered: "refused by its content filter",
    BadRequest: "bad request",
}


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
        return ConnectionFailed(f"cannot reach {provider}: {_connection_reason(refused)}", provider=provider)
    if isinstance(exc, sdk.timeout):
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        return UpstreamTimeout(f"{provider} did not answer{within}", provider=provider)
    if isinstance(exc, sdk.connection):
        cause = exc.__cause__ or exc
        return ConnectionFailed(
            f"the connection to {provider} failed ({type(cause).__name__})", provider=provider
        )
    if isinstance(exc, sdk.status):
        response = getattr(exc, "response", None)
        return error_for_status(
            int(getattr(exc, "status_code", 0)),
            headers=getattr(response, "headers", {}),
            body=getattr(exc, "body", None),
            provider=provider,
            now=now,
        )
    # Anything else the SDK raises (a response it could not decode, an error event in a stream)
    # still gets a name; it is retryable because nothing says the request itself was wrong.
    return ServerError(f"{provider} failed ({type(exc).__name__})", provider=provider)


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


def _connection_reason(error: OSError) -> str:
    """What went wrong, from the error's class and errno alone: its text names the host."""
    if isinstance(getattr(error, "os_error", error), socket.gaierror):  # aiohttp wraps the OS's
        return "the host name did not resolve"
    code = error.errno
    if isinstance(code, int) and code in errno.errorcode:
        return os.strerror(code).lower()
    return f"connection failed ({type(error).__name__})"


def error_for_status(
    status_code: int,
    *,
    headers: Mapping[str, str],
    body: object,
    provider: str,
    now: datetime,
) -> UpstreamError:
    """The named error for an HTTP error response from a provider."""
    kind = _error_type_for_status(status_code, body)
    error = _error_object(body)
    request_id = _request_id(headers, body)
    param = _identifier(error.get("param")) if error is not None and kind is BadRequest else None
    what = _WHAT[kind] + (f", param {param!r}" if param else "")
    message = f"{provider} answered {status_code} ({what})"
    if request_id:
        message += f", request id {request_id}"
    return kind(
        message,
        status_code=status_code,
        retry_after_s=retry_after_s(headers, now),
        provider=provider,
        request_id=request_id,
        param=param,
        upstream_code=_upstream_code(error),
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


def _identifier(value: object) -> str | None:
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def _request_id(headers: Mapping[str, str], body: object) -> str | None:
    """The upstream's id of the call, for the tenant to quote to the operator and the operator
    to the provider: a header, else Anthropic's `request_id` in the body."""
    for name in _REQUEST_ID_HEADERS:
        found = _identifier(headers.get(name))
        if found:
            return found
    return _identifier(body.get("request_id")) if isinstance(body, Mapping) else None


def _upstream_code(error: Mapping[str, Any] | None) -> str | None:
    """The provider's error `type` and `code` (OpenAI: `requests/rate_limit_exceeded`;
    Anthropic: `rate_limit_error`), for the operator's log."""
    if error is None:
        return None
    labels = [_identifier(error.get(field)) for field in ("type", "code")]
    return "/".join(label for label in labels if label) or None


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
