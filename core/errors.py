"""The one error hierarchy of jobgate.

Two families: `ApiError` for what a client did wrong or cannot have right now (mapped to
HTTP status and the JSON error shape in one place, `api/errors.py`), and `UpstreamError`
for what a provider did, normalised into a small set of named types (DESIGN.md principle 5)
that decide retry vs fallback vs fail and that the client sees in a job's `error`.
"""

from __future__ import annotations

from typing import ClassVar


class JobgateError(Exception):
    """Base of every error jobgate raises on purpose."""


class ConfigError(JobgateError):
    """The providers/routes config is unusable; the message names the key."""


# --- Webhook delivery errors ------------------------------------------------------------------
# Raised while sending, never answered to a client: a URL that is plainly bad is refused at
# submission with `InvalidRequest`; these are what DNS says at delivery time.


class ForbiddenDestination(JobgateError):
    """A webhook host resolved to an address webhooks may not reach (loopback, private, metadata...)."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        message = f"forbidden destination {address} ({reason})"
        if host != address:
            message += f" for {host}"
        super().__init__(message)
        self.host = host
        self.address = address
        self.reason = reason


class UnresolvableDestination(JobgateError):
    """A webhook host has no address: DNS failed or answered nothing."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"dns lookup failed for {host}: {detail}")
        self.host = host


# --- Client-facing errors -------------------------------------------------------------------


class ApiError(JobgateError):
    status_code: ClassVar[int] = 400
    error_type: ClassVar[str] = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthenticated(ApiError):
    status_code = 401
    error_type = "authentication_error"


class KeyRevoked(Unauthenticated):
    error_type = "key_revoked"


class KeyExpired(Unauthenticated):
    error_type = "key_expired"


class PermissionDenied(ApiError):
    """The key is valid but its scope does not reach this route or this use (CONTRACT.md:
    a tenant key on an operator route, a model the key may not use)."""

    status_code = 403
    error_type = "permission_denied"


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(ApiError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(ApiError):
    status_code = 413
    error_type = "request_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    error_type = "invalid_request_error"


class TooManyRequests(ApiError):
    """A per-tenant (or per-address) rate limit refused the request; `retry_after_s` says when
    it may come again."""

    status_code = 429
    error_type = "rate_limit_exceeded"


class ServiceUnavailable(ApiError):
    status_code = 503
    error_type = "service_unavailable"


class GatewayTimeout(ApiError):
    status_code = 504
    error_type = "timeout"


# --- Upstream errors, normalised ------------------------------------------------------------


class UpstreamError(JobgateError):
    """A provider call failed. `error_type` is the name the client sees in the job's `error`."""

    error_type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = True
    http_status: ClassVar[int] = 502

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        provider: str | None = None,
        request_id: str | None = None,
        param: str | None = None,
        upstream_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.provider = provider
        # The provider's id of the call and its error type/code: for the operator's log (the
        # message, which tenants read, never carries the provider's own text).
        self.request_id = request_id
        self.upstream_code = upstream_code
        # The request field an error names, when it names one.
        self.param = param

    def to_error(self) -> dict[str, str]:
        error = {"type": self.error_type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        return error


class RateLimited(UpstreamError):
    error_type = "rate_limited"
    http_status = 429


class Overloaded(UpstreamError):
    error_type = "overloaded"
    http_status = 503


class UpstreamTimeout(UpstreamError):
    error_type = "timeout"
    http_status = 504


class ServerError(UpstreamError):
    error_type = "server_error"
    http_status = 502


class ConnectionFailed(UpstreamError):
    error_type = "connection_error"
    http_status = 502


class Truncated(UpstreamError):
    """The provider answered without a terminal finish reason, or with a malformed body."""

    error_type = "truncated"
    http_status = 502


class BadRequest(UpstreamError):
    error_type = "bad_request"
    retryable = False
    http_status = 400


class Unsupported(UpstreamError):
    """The target cannot honour a parameter the request sets (Anthropic has no `seed`): the
    next target is tried; a job no target can honour fails naming the parameter."""

    error_type = "unsupported_parameter"
    retryable = False
    http_status = 400

    param: str

    def __init__(self, message: str, *, param: str, provider: str | None = None) -> None:
        super().__init__(message, provider=provider, param=param)


class StreamInterrupted(UpstreamError):
    """A streamed call failed after part of its answer had reached the client: it cannot be
    retried or moved to another target without sending the client a second beginning."""

    error_type = "stream_interrupted"
    retryable = False
    http_status = 502


class ClientDisconnected(UpstreamError):
    """The client of a streamed call went away; the upstream call was ended with it."""

    error_type = "client_disconnected"
    retryable = False
    http_status = 499


class AuthFailed(UpstreamError):
    error_type = "auth"
    retryable = False
    http_status = 502


class ContentFiltered(UpstreamError):
    error_type = "content_filter"
    retryable = False
    http_status = 400


class NotFoundUpstream(UpstreamError):
    error_type = "not_found"
    retryable = False
    http_status = 502


# Job error types that are not upstream errors, and the status the sync path answers with.
_JOB_ERROR_STATUS = {
    "deadline_exceeded": 504,
    "cancelled": 409,
    "attempts_exhausted": 502,
    "budget_exceeded": 429,
}
BUDGET_EXCEEDED = "budget_exceeded"
# The `code` OpenAI gives the same refusal, where it differs from jobgate's error type.
_OPENAI_CODES = {BUDGET_EXCEEDED: "insufficient_quota"}


def openai_code(error_type: str) -> str:
    """The `error.code` of the sync path's OpenAI-shaped error for a job's `error.type`."""
    return _OPENAI_CODES.get(error_type, error_type)


def http_status_for(error_type: str) -> int:
    """The HTTP status OpenAI would use for a job's `error.type` (for the synchronous path)."""
    pending: list[type[UpstreamError]] = [UpstreamError]
    while pending:
        cls = pending.pop()
        if cls.error_type == error_type and cls is not UpstreamError:
            return cls.http_status
        pending.extend(cls.__subclasses__())
    return _JOB_ERROR_STATUS.get(error_type, 502)
