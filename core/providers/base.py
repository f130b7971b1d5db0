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

`ClientShards` gives an adapter `ceil(max_connections / 48)` SDK clients, each over its own
pool of about 48 connections, instead of one client over one pool of `max_connections`:
httpcore2's pool (`_assign_requests_to_connections`) scans every connection and queued request
at the start and end of each request, O(n) a call and O(n^2) in all. Client CPU a call, one
pool of 1,016 connections, against the sim at 5 s latency, 30 s closed loops on this shared
2-core machine (OpenAI adapter; Anthropic alike): 1.4-2.0 ms at 100 in flight, 1.8-2.6 ms at
300, 3.4-3.9 ms at 1,000 (where the client saturated a core and finished 3,400-3,900 of the
6,000 calls the sim could answer). Sharded: 1.35-1.56, 1.65-1.92 and 1.57-1.70 ms, flat, with
5,100-6,000 answered (Anthropic: 1.2, 1.5, 3.4 ms before; 1.2, 1.2, 1.6 ms after). Between 16
and 128 connections a shard the cost at 1,000 in flight was the same within this machine's
noise (1.67-1.96 ms, one reading of 2.27 in a load spike), so 48 sits in the middle; at 10 in
flight the shards and the gate below cost nothing measurable (1.36-1.43 ms a call either way).

`ConnectGate` lets an adapter open at most 32 connections at once, and starts a connection's
5 s connect timeout only when its turn comes, one loop pass later. A cold burst of 1,000 calls
is otherwise started in one pass of the event loop, holding it for the CPU of all of them
while the connect timeouts of the first ones run: on this machine with 8 extra busy processes,
all 1,000 calls failed with connect timeouts (connect steps lasting up to 9.4 s), and 945 and
257 of 1,000 in two runs under other engineers' load alone. Sharded, none failed, the slowest
connect taking 2-2.7 s; with the gate too, none failed, the slowest took 0.25-1 s and nine in
ten under 0.11 s. 8 turns did as well locally but would open a remote TLS upstream's
connections slowly; at 64 and 128, nine in ten connects took 0.24 and 0.87 s.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import httpx2

from core.config import ProviderConfig
from core.domain.chat import TERMINAL_FINISH_REASONS, ChatRequest, Completion, RateLimitHeaders
from core.errors import ContentFiltered, Truncated

SdkClient = TypeVar("SdkClient")
T = TypeVar("T")

# Connections a shard, and connections one adapter opens at once: measured, see the docstring.
SHARD_CONNECTIONS = 48
CONCURRENT_CONNECTS = 32
CONNECT_TIMEOUT_S = 5.0
# httpcore's `trace` extension names each step of a request; these open a connection.
_OPENING_STARTED = frozenset({"connection.connect_tcp.started", "connection.start_tls.started"})
_OPENING_ENDED = frozenset(
    {
        "connection.connect_tcp.complete",
        "connection.connect_tcp.failed",
        "connection.start_tls.complete",
        "connection.start_tls.failed",
    }
)


class Provider(Protocol):
    """One configured upstream (a name from the config file) behind its own connection pools."""

    name: str
    kind: str

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        """Call the upstream once (no retries) and return its normalised answer."""
        ...

    async def close(self) -> None:
        """Close the connection pools; the adapter must not be used afterwards."""
        ...


class ClientShards(Generic[SdkClient]):
    """`count` SDK clients over one upstream, each with its own small connection pool.

    A call borrows the least busy shard (fewest calls in flight; the first on ties, so calls
    one at a time reuse one shard's warm connections). A shard's count only grows while it is
    the lowest, so no shard ever holds more than `ceil(in_flight / count)` calls, which is
    within its pool while the adapter's calls in flight stay within `max_connections`: no call
    waits for a connection that another shard has idle.
    """

    def __init__(
        self,
        http_client_factory: Callable[..., httpx2.AsyncClient],
        make_client: Callable[[httpx2.AsyncClient, httpx2.Timeout], SdkClient],
        config: ProviderConfig,
        max_connections: int,
        *,
        shard_connections: int = SHARD_CONNECTIONS,
        concurrent_connects: int = CONCURRENT_CONNECTS,
    ) -> None:
        count = max(1, math.ceil(max_connections / shard_connections))
        # Spread evenly: 1,016 connections make 22 pools of 47, not 21 of 48 and one of 8.
        per_shard = max(1, math.ceil(max_connections / count))
        self.timeout = httpx2.Timeout(config.timeout_s, connect=min(CONNECT_TIMEOUT_S, config.timeout_s))
        limits = httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        gate = ConnectGate(concurrent_connects, wait_s=config.timeout_s)
        hooks = {"request": [gate.trace_request]}
        self._http_clients = [
            http_client_factory(timeout=self.timeout, limits=limits, event_hooks=hooks) for _ in range(count)
        ]
        self._clients = [make_client(http_client, self.timeout) for http_client in self._http_clients]
        self._in_flight = [0] * count
        self.connections_per_shard = per_shard

    @classmethod
    def for_sdk(
        cls,
        sdk_client: Callable[..., SdkClient],
        http_client_factory: Callable[..., httpx2.AsyncClient],
        config: ProviderConfig,
        max_connections: int,
        *,
        default_base_url: str,
    ) -> ClientShards[SdkClient]:
        """Shards of an official SDK client (`openai.AsyncOpenAI`, `anthropic.AsyncAnthropic`)
        on the provider's base URL and key, with the SDK's own retries off (jobgate decides)."""
        base_url, api_key = config.base_url or default_base_url, config.api_key()
        return cls(
            http_client_factory,
            lambda http_client, timeout: sdk_client(
                base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0, http_client=http_client
            ),
            config,
            max_connections,
        )

    @property
    def in_flight(self) -> tuple[int, ...]:
        """How many calls each shard has in flight now."""
        return tuple(self._in_flight)

    async def call(self, send: Callable[[SdkClient], Awaitable[T]]) -> T:
        """Await `send(client)` on the least busy shard's client."""
        in_flight = self._in_flight
        shard = in_flight.index(min(in_flight))
        in_flight[shard] += 1
        try:
            return await send(self._clients[shard])
        finally:
            in_flight[shard] -= 1

    async def aclose(self) -> None:
        """Close every shard's pool (an SDK client holds nothing else to close)."""
        for http_client in self._http_clients:
            await http_client.aclose()


class ConnectGate:
    """Lets at most `limit` connections be opened at once; the others wait their turn, and a
    connection's connect timeout starts only when its turn has come.

    Installed on each request as httpcore's `trace` extension (the SDKs set none of their own),
    whose callback httpcore awaits before and after every step of a request. A turn is used one
    pass of the event loop after it is granted, so a burst of calls started in one pass (which
    holds the loop for the CPU of all of them) does not run down the connect timeout of the
    first ones. A wait for a turn is bounded by `wait_s` (the pool timeout: waiting for a turn
    is waiting for a connection), then fails as `httpx2.PoolTimeout`, which the SDKs report as
    their timeout error. It only works on asyncio, the one event loop jobgate runs.
    """

    def __init__(self, limit: int, *, wait_s: float) -> None:
        self._turns = asyncio.Semaphore(limit)
        self._wait_s = wait_s

    async def trace_request(self, request: httpx2.Request) -> None:
        """The `request` event hook of an `httpx2.AsyncClient`."""
        request.extensions["trace"] = self._on_step

    async def _on_step(self, step: str, info: dict[str, Any]) -> None:
        if step in _OPENING_STARTED:
            try:
                async with asyncio.timeout(self._wait_s):
                    await self._turns.acquire()
            except TimeoutError as exc:
                raise httpx2.PoolTimeout(f"no turn to open a connection within {self._wait_s} s") from exc
            try:
                await asyncio.sleep(0)
            except BaseException:
                self._turns.release()
                raise
        elif step in _OPENING_ENDED:
            self._turns.release()


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
    return Completion(
        body=body,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason=str(finish_reason),
        provider=provider,
        model=model,
        rate_limits=rate_limits,
    )


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
