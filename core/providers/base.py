"""The contract every upstream provider adapter satisfies, its connection pools, and the shared
check of its answer.

An adapter turns a `ChatRequest` into one awaited call to its upstream and returns a
`Completion` in the OpenAI `chat.completion` shape, or raises one of the named
`core.errors.UpstreamError` subclasses (DESIGN.md principle 5). A worker process runs all its
calls (up to 1,000 in flight) as tasks on one asyncio event loop. `json_object_body` reads an
answer's raw JSON body as a dict; no SDK model is built and dumped back to a dict, which cost
0.1 to 0.2 ms of CPU a call, several times the plain parse. `completion_from_openai_body` is
the one place that decides whether an OpenAI-shaped body is a finished answer, so both adapters
judge bodies alike; `header_int` reads the counts in their rate-limit headers alike.

`sdk_client` builds an adapter's one SDK client over the SDK's own aiohttp transport
(`DefaultAioHttpClient`, the `aiohttp` extra the SDKs document "for improved concurrency
performance"), and `post_raw` sends a call through the SDK's generic `post`: the SDK's headers,
auth, error classes and timeouts, but not its typed-parameter transform, and the body comes back
unparsed. Client CPU a call against the sim on this 2-core machine (side-by-side runs, 3,000 calls
each): 64 in flight at 0 ms, httpx2 transport with `with_raw_response.create`
1.65 ms, aiohttp with it 1.2 ms, httpx2 with `post` 1.2 ms, aiohttp with `post` 0.7 ms; 1,000
in flight at 5 s, one client: httpx2 4.1 ms (httpcore2's pool scans every connection at each
request's start and end, which is why earlier versions split the pool into shards), aiohttp
0.93 ms at 176 calls/s of the 200 the latency allows. aiohttp's pool needs no sharding.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx2

from core.config import ProviderConfig
from core.domain.chat import TERMINAL_FINISH_REASONS, ChatRequest, Completion, RateLimitHeaders
from core.domain.relay import Relay
from core.errors import ContentFiltered, Truncated, Unsupported

SdkClient = TypeVar("SdkClient")

CONNECT_TIMEOUT_S = 5.0


class Provider(Protocol):
    """One configured upstream (a name from the config file) behind its own connection pools."""

    name: str
    kind: str

    async def complete(self, request: ChatRequest, model: str, *, relay: Relay | None = None) -> Completion:
        """Call the upstream once (no retries) and return its normalised answer; with a
        `relay`, streamed, each chunk sent to it as it comes."""
        ...

    def refuses(self, request: ChatRequest) -> Unsupported | None:
        """Why this upstream cannot honour `request` (a parameter with no counterpart), or None.
        Asked before a call is booked, so the runner can go on to the next target."""
        ...

    async def close(self) -> None:
        """Close the connection pools; the adapter must not be used afterwards."""
        ...


def sdk_client(
    sdk_client: Callable[..., SdkClient],
    http_client_factory: Callable[..., httpx2.AsyncClient],
    config: ProviderConfig,
    max_connections: int,
    *,
    default_base_url: str,
) -> SdkClient:
    """An official SDK client (`openai.AsyncOpenAI`, `anthropic.AsyncAnthropic`) on the
    provider's base URL and key, over one pool of `max_connections`, with the SDK's own retries
    off (jobgate decides)."""
    timeout = call_timeout(config)
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return sdk_client(
        base_url=config.base_url or default_base_url,
        api_key=config.api_key(),
        timeout=timeout,
        max_retries=0,
        http_client=http_client_factory(timeout=timeout, limits=limits),
    )


def call_timeout(config: ProviderConfig) -> httpx2.Timeout:
    """The provider's timeout, with a connect step bounded by `CONNECT_TIMEOUT_S`."""
    return httpx2.Timeout(config.timeout_s, connect=min(CONNECT_TIMEOUT_S, config.timeout_s))


class _PostingClient(Protocol):
    async def post(self, path: str, *, cast_to: Any, body: Any, options: Any) -> Any: ...


class _StreamingClient(Protocol):
    async def post(
        self, path: str, *, cast_to: Any, body: Any, options: Any, stream: bool, stream_cls: Any
    ) -> Any: ...


async def post_raw(
    client: _PostingClient, path: str, body: dict[str, Any], timeout: httpx2.Timeout
) -> httpx2.Response:
    """POST `body` to `path` through the SDK client; the response with its body read. A non-2xx
    answer raises the SDK's status error, a lost connection or timeout its own errors."""
    response: httpx2.Response = await client.post(
        path, cast_to=httpx2.Response, body=body, options=_options(timeout)
    )
    return response


async def post_stream(
    client: _StreamingClient, path: str, body: dict[str, Any], timeout: httpx2.Timeout, *, stream_cls: Any
) -> Any:
    """POST `body` to `path` through the SDK client and stream the answer: the SDK's own
    `stream_cls` over it (its SSE decoding, its error events), each event's JSON as a plain
    dict, no typed chunk built and dumped back (`chat.completions.create` spent over a
    millisecond of a stream's first token on its parameter transform and chunk models).
    A non-2xx answer raises the SDK's status error before any event."""
    return await client.post(
        path, cast_to=object, body=body, options=_options(timeout), stream=True, stream_cls=stream_cls
    )


def _options(timeout: httpx2.Timeout) -> dict[str, Any]:
    """A call's SDK request options: its timeout and a process-unique idempotency key."""
    return {"timeout": timeout, "idempotency_key": next(_idempotency_keys)}


def _keys() -> Iterator[str]:
    """The SDKs send an `Idempotency-Key` with every POST, by default a fresh `uuid4` (an
    `os.urandom` system call a call); a per-process prefix and a counter are as unique."""
    prefix = f"jobgate-{uuid.uuid4().hex}"
    for n in itertools.count():
        yield f"{prefix}-{n}"


_idempotency_keys = _keys()


def json_object_body(response: httpx2.Response, *, provider: str) -> dict[str, Any]:
    """The JSON object a 2xx answer carries, or `Truncated` when it carries anything else.

    The content type is not consulted: a body that parses as an object is read whatever it is
    labelled, as the SDKs read it. `NaN` and `Infinity` are refused: they are not JSON, and a
    body holding them would be stored and later served as invalid JSON.
    """
    try:
        body = json.loads(response.content, parse_constant=_refuse_constant)
    except ValueError as exc:
        # Not JSON, or not UTF-8 (both are ValueErrors): the answer was cut off or mangled.
        raise Truncated(f"{provider} answered with a malformed body: {exc}", provider=provider) from exc
    if not isinstance(body, dict):
        raise Truncated(
            f"{provider} answered with a body that is not a JSON object ({type(body).__name__})",
            provider=provider,
        )
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def completion_from_openai_body(
    body: dict[str, Any],
    *,
    provider: str,
    model: str,
    rate_limits: RateLimitHeaders | None = None,
) -> Completion:
    """A `Completion` from an OpenAI `chat.completion` body, or the error the body amounts to.

    A missing or unfinished choice, or missing usage, is `Truncated`: the caller may retry, but
    must never store it as an answer. A content-filter finish is `ContentFiltered`. `model` is
    the target model jobgate asked for (pricing is keyed on it), not the dated name an
    upstream may echo back; the body keeps the upstream's own.
    """
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, dict):
        raise Truncated(f"{provider} answered without any choice", provider=provider)
    finish_reason = first.get("finish_reason")
    if finish_reason == "content_filter":
        raise ContentFiltered(f"{provider}'s content filter stopped the answer", provider=provider)
    if finish_reason not in TERMINAL_FINISH_REASONS:
        raise Truncated(
            f"{provider} answered without a terminal finish reason (finish_reason={finish_reason!r})",
            provider=provider,
        )
    usage = body.get("usage")
    input_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    output_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
        raise Truncated(f"{provider} answered without token usage", provider=provider)
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    details = details if isinstance(details, dict) else {}
    return Completion(
        body=body,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason=str(finish_reason),
        provider=provider,
        model=model,
        rate_limits=rate_limits,
        cached_input_tokens=_count(details.get("cached_tokens")),
        cache_write_tokens=_count(details.get(CACHE_WRITE_TOKENS)),
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


# Anthropic's prompt-cache writes, carried beside OpenAI's `cached_tokens` in the translated
# usage (`prompt_tokens_details`), since they are priced apart.
CACHE_WRITE_TOKENS = "cache_write_tokens"


def header_int(value: str | None) -> int | None:
    """A count from a response header (`"4999"`, or `"4999.0"` from some compatible servers);
    None when absent or unreadable, so one odd header never fails a good answer."""
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def utc_now() -> datetime:
    """The wall clock adapters read by default (resets and Retry-After dates are wall-clock
    times); each adapter takes another `now` for tests."""
    return datetime.now(UTC)
