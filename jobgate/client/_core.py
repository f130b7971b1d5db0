"""The core `Client` and `AsyncClient` share: every operation, written once, without I/O.

An operation is a generator that yields steps and is sent their outcomes: `Send(call)` (the
driver sends the request and replies with the `httpx.Response`, or the `httpx.TransportError`
it got instead), `Pause(seconds)`, `ReadLine(lines)` (the next line of a streamed answer,
None at its end, or the transport error), `Close(response)` and `Emit(item)` (handed to the
caller of an iterating method). Its return value is the method's result. Each client is then
only a driver: its transport calls, sync or awaited (the sans-I/O style of h11 and httpcore).

Retries live here too (`exchange`): the same `Call`, with the same Idempotency-Key, is sent
again after the wait `RetryPolicy` chooses.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from jobgate.client._retry import RetryPolicy, parse_retry_after
from jobgate.client._upload import CONTENT_TYPE, NdjsonUpload
from jobgate.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    error_class_for,
)

T = TypeVar("T")

USER_AGENT = "jobgate-client/0.1"


@dataclass(frozen=True)
class Call:
    """One API request, as data; the driver makes it an `httpx.Request` each time it is sent."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    upload: NdjsonUpload | None = None
    idempotency_key: str | None = None
    timeout_s: float | None = None  # None: the client's own
    stream: bool = False

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        if self.upload is not None:
            headers["Content-Type"] = CONTENT_TYPE
        return headers


@dataclass(frozen=True)
class Send:
    call: Call


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class ReadLine:
    lines: Any = field(repr=False)  # the driver's own line iterator (sync or async)


@dataclass(frozen=True)
class Close:
    response: httpx.Response


@dataclass(frozen=True)
class Emit:
    item: Any


Step = Send | Pause | ReadLine | Close | Emit
Operation = Generator[Step, Any, T]


@dataclass(frozen=True)
class Streamed:
    """A driver's reply to a streamed `Send`: the open response and its line iterator."""

    response: httpx.Response
    lines: Any


def status_error(response: httpx.Response) -> APIStatusError:
    """The typed error for an error answer (its body read), in the API's own words."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": response.text[:500] or response.reason_phrase}
    return error_class_for(response.status_code)(
        response.status_code,
        str(error.get("message") or response.reason_phrase),
        error_type=str(error.get("type") or "api_error"),
        param=error.get("param"),
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
        request_id=response.headers.get("x-request-id"),
        body=body,
    )


def connection_error(exc: httpx.TransportError, call: Call) -> APIConnectionError:
    kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    error = kind(f"{call.method} {call.path}: {type(exc).__name__}: {exc}".rstrip(": "))
    error.__cause__ = exc
    return error


def failure_of(
    outcome: httpx.Response | httpx.TransportError, call: Call
) -> APIStatusError | APIConnectionError:
    if isinstance(outcome, httpx.Response):
        return status_error(outcome)
    return connection_error(outcome, call)


def exchange(call: Call, policy: RetryPolicy) -> Operation[Any]:
    """Send `call` until it succeeds or its failure may not be retried. Returns the response,
    or for a `stream` call the `Streamed` one, still open (the driver closes it at the latest
    when the operation ends)."""
    retries = 0
    while True:
        outcome = yield Send(call)
        response = outcome.response if isinstance(outcome, Streamed) else outcome
        if isinstance(response, httpx.Response) and not response.is_error:
            return outcome
        error = failure_of(response, call)
        delay = policy.delay_s(retries, error)
        if delay is None:
            raise error
        retries += 1
        yield Pause(delay)


def json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise APIStatusError(
            response.status_code, f"the API answered with something that is not JSON: {exc}"
        ) from exc


def fetch(call: Call, policy: RetryPolicy) -> Operation[Any]:
    """`exchange` and the answer's JSON."""
    response = yield from exchange(call, policy)
    return json_of(response)


@dataclass(frozen=True)
class Done:
    """What a driver's step loop ends with: the operation's return value."""

    value: Any


def advance(op: Operation[Any], reply: Any) -> Step | Done:
    """`op`'s next step, sent `reply` (the outcome of the previous one); `Done` once it returns."""
    try:
        return op.send(reply)
    except StopIteration as stop:
        return Done(stop.value)


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call, content: Any = None) -> httpx.Request:
    """The `httpx.Request` for `call`; `content` is the upload's chunks, sync or async."""
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        content=content,
        headers=call.headers(),
        timeout=httpx.USE_CLIENT_DEFAULT if call.timeout_s is None else call.timeout_s,
    )


def client_options(base_url: str, api_key: str, timeout_s: float) -> dict[str, Any]:
    """What `httpx.Client` and `httpx.AsyncClient` are made with. `base_url` is the API's root;
    a trailing `/v1` (as the OpenAI SDK's base URL has) is dropped, the paths carry it."""
    if not api_key:
        raise ValueError("an API key is needed: Client(base_url, api_key)")
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    return {
        "base_url": root,
        "headers": {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        "timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
    }
