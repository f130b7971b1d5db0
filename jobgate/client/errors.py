"""The client's one error hierarchy: what a caller catches, whatever went wrong.

The API answers every error as `{"error": {"type", "message", "param"}}` with a status
(CONTRACT.md); each status a caller acts on differently has its class here, all under
`APIStatusError`, which keeps the type, message, param, `Retry-After` and request id. A
request that got no answer at all is an `APIConnectionError`. Everything the client raises
on purpose is a `JobgateError`, so one `except` catches them all.
"""

from __future__ import annotations

from typing import Any

# Statuses a retry may cure: a slow upload (408), a limit (429), an outage (5xx).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class JobgateError(Exception):
    """Base of every error the client raises."""


class APIConnectionError(JobgateError):
    """No answer: the connection failed, was cut, or timed out. Retried, as every request the
    client sends may be repeated (submits carry an Idempotency-Key)."""

    retryable = True
    retry_after_s: float | None = None


class APITimeoutError(APIConnectionError):
    """The request timed out before an answer came."""


class APIStatusError(JobgateError):
    """The API answered with an error status; `type`, `message` and `param` are its own words."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "api_error",
        param: str | None = None,
        retry_after_s: float | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status_code} {error_type}: {message}")
        self.status_code = status_code
        self.type = error_type
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.request_id = request_id
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.status_code in RETRYABLE_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The error as the API shapes it, plus its status (what `--json` prints)."""
        return {
            "error": {"type": self.type, "message": self.message, "param": self.param},
            "status": self.status_code,
        }


class BadRequestError(APIStatusError):
    """400 (and 415, 422): the request is wrong; `param` names the field or line."""


class AuthenticationError(APIStatusError):
    """401: no key, a wrong key, or a revoked or expired one."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (an operator route with a tenant key)."""


class NotFoundError(APIStatusError):
    """404: no such id for this key's tenant."""


class ConflictError(APIStatusError):
    """409: an Idempotency-Key reused with another body, or a delete of unfinished work."""


class PayloadTooLargeError(APIStatusError):
    """413: a request or upload over the API's size limits."""


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after_s` says when to come back."""


class InternalServerError(APIStatusError):
    """5xx: the API or what it depends on failed; retried."""


class WaitTimeout(JobgateError, TimeoutError):
    """A wait for a job or batch to finish gave up first; the work goes on."""


class WebhookVerificationError(JobgateError):
    """A webhook whose signature, headers or timestamp do not verify: do not trust it."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_class_for(status_code: int) -> type[APIStatusError]:
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIStatusError)
