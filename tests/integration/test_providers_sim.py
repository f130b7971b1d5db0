"""Both provider adapters against the real simulated upstream (`python -m sim`, a child process).

Every behaviour that both adapters share is specified once and run over both (a fixture
parametrised over the kinds), so the two cannot drift apart: answers and usage as the sim
counts them, each injected failure mapped to its named error, rate-limit headers read, and
hundreds of calls in flight at once through one adapter, spread over its connection pools.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from core.config import GatewayConfig, ProviderConfig, dev_config_dict
from core.domain.chat import ChatRequest, Completion
from core.errors import (
    ConnectionFailed,
    Overloaded,
    RateLimited,
    ServerError,
    Truncated,
    UpstreamError,
    UpstreamTimeout,
)
from core.providers import Provider, adapter, build_providers, close_providers
from sim.tokens import count_tokens, prompt_tokens
from tests.sim_process import SimHandle, run_sim

KINDS = ("openai", "anthropic")
HELLO = ChatRequest(messages=[{"role": "user", "content": "hello there"}], params={"max_tokens": 64})

MakeProvider = Callable[..., Provider]
AnsweringWith = Callable[[str, bytes], Awaitable[str]]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with run_sim() as handle:
        yield handle


@pytest.fixture
def fresh_sim(sim: SimHandle) -> SimHandle:
    sim.reset(config=True)
    return sim


@pytest.fixture
async def make_provider(fresh_sim: SimHandle) -> AsyncIterator[MakeProvider]:
    """Builds adapters aimed at the sim (or elsewhere) and closes them after the test."""
    made: list[Provider] = []

    def make(
        kind: str, *, base_url: str | None = None, timeout_s: float = 10, max_connections: int = 1000
    ) -> Provider:
        if base_url is None:
            base_url = fresh_sim.openai_base_url if kind == "openai" else fresh_sim.anthropic_base_url
        config = ProviderConfig.model_validate({"kind": kind, "base_url": base_url, "timeout_s": timeout_s})
        factory = adapter(kind)
        assert factory is not None
        provider = factory(f"sim-{kind}", config, max_connections=max_connections)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_openai_adapter_returns_the_echo_answer_with_the_usage_the_sim_counted(
    fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    completion = await make_provider("openai").complete(ChatRequest(messages=messages), "gpt-sim")

    assert completion.body["object"] == "chat.completion"
    assert completion.body["choices"][0]["message"]["content"] == "echo: hello there"
    assert (completion.finish_reason, completion.provider, completion.model) == (
        "stop",
        "sim-openai",
        "gpt-sim",
    )
    counted = fresh_sim.stats()["models"]["gpt-sim"]
    assert (completion.input_tokens, completion.output_tokens) == (
        counted["input_tokens"],
        counted["output_tokens"],
    )
    assert completion.input_tokens == prompt_tokens(messages)
    assert completion.output_tokens == count_tokens("echo: hello there")


async def test_anthropic_adapter_returns_the_echo_answer_with_the_usage_the_sim_counted(
    fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    completion = await make_provider("anthropic").complete(ChatRequest(messages=messages), "claude-sim")

    assert completion.body["id"].startswith("chatcmpl-msg_")
    assert completion.body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hello there",
        "refusal": None,
    }
    assert completion.finish_reason == "stop"
    counted = fresh_sim.stats()["models"]["claude-sim"]
    assert (completion.input_tokens, completion.output_tokens) == (
        counted["input_tokens"],
        counted["output_tokens"],
    )
    # The system message travelled as Anthropic's top-level `system`, which the sim counts apart.
    assert completion.input_tokens == prompt_tokens(messages[1:], system="Be brief.")
    assert completion.body["usage"]["total_tokens"] == completion.input_tokens + completion.output_tokens


async def test_anthropic_adapter_returns_tool_calls_in_the_openai_shape(make_provider: MakeProvider) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    request = ChatRequest(
        messages=[{"role": "user", "content": "call_tool: Paris"}], params={"tools": [tool]}
    )
    completion = await make_provider("anthropic").complete(request, "claude-sim")

    assert completion.finish_reason == "tool_calls"
    (call,) = completion.body["choices"][0]["message"]["tool_calls"]
    assert (call["type"], call["function"]["name"]) == ("function", "lookup")
    assert call["function"]["arguments"] == '{"input": "Paris"}'


async def test_both_adapters_report_a_length_cut_as_finish_reason_length(
    kind: str, make_provider: MakeProvider
) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": "a long question " * 20}], params={"max_tokens": 3}
    )
    completion = await make_provider(kind).complete(request, "cut")
    assert (completion.finish_reason, completion.output_tokens) == ("length", 3)


async def injected_failure(
    sim: SimHandle, make_provider: MakeProvider, kind: str, **knobs: Any
) -> UpstreamError:
    sim.configure(models={"failing": {"fail_rate": 1.0, **knobs}})
    with pytest.raises(UpstreamError) as raised:
        await make_provider(kind).complete(HELLO, "failing")
    assert raised.value.provider == f"sim-{kind}"
    assert raised.value.__cause__ is not None
    return raised.value


async def test_a_forced_429_is_rate_limited_with_the_retry_after_the_sim_sent(
    kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    error = await injected_failure(
        fresh_sim, make_provider, kind, fail_status=429, retry_after_s=5, organization="org-Qx7"
    )
    assert isinstance(error, RateLimited)
    assert (error.status_code, error.retry_after_s) == (429, 5.0)
    # The sim's words name its organisation, as OpenAI's and Anthropic's do; jobgate's do not.
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert error.message == f"sim-{kind} answered 429 (rate limited), request id {error.request_id}"


async def test_an_injected_500_is_a_server_error(
    kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    error = await injected_failure(fresh_sim, make_provider, kind, fail_status=500)
    assert (type(error), error.status_code) == (ServerError, 500)


@pytest.mark.parametrize("status", [529, 503])
async def test_an_injected_529_or_503_is_overloaded_with_retry_after(
    status: int, kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    error = await injected_failure(fresh_sim, make_provider, kind, fail_status=status, retry_after_s=2)
    assert (type(error), error.status_code, error.retry_after_s) == (Overloaded, status, 2.0)


async def test_a_hanging_upstream_is_an_upstream_timeout_after_the_provider_timeout(
    kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    fresh_sim.configure(models={"hanging": {"fail_rate": 1.0, "fail_status": "timeout", "hang_s": 5}})
    provider = make_provider(kind, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as raised:
        await provider.complete(HELLO, "hanging")
    assert time.monotonic() - started < 2
    assert raised.value.provider == f"sim-{kind}"


async def test_a_closed_port_is_a_connection_failure(kind: str, make_provider: MakeProvider) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{closed_port}" + ("/v1" if kind == "openai" else "")
    with pytest.raises(ConnectionFailed) as raised:
        await make_provider(kind, base_url=base_url).complete(HELLO, "any")
    assert raised.value.provider == f"sim-{kind}"
    assert raised.value.message == f"cannot reach sim-{kind}: connection refused"  # no address


@pytest.fixture
async def answering_with() -> AsyncIterator[AnsweringWith]:
    """Starts a server answering every request `200` with one fixed body; returns its address.

    The sim only sends well-formed answers, so a mangled one needs this stand-in."""
    servers: list[asyncio.Server] = []

    async def start(content_type: str, body: bytes) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (content_type.encode(), len(body), body)
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# A finished answer in both dialects at once (each adapter reads only its own fields).
FINISHED_IN_BOTH_SHAPES: dict[str, Any] = {
    "id": "msg_1",
    "object": "chat.completion",
    "model": "stand-in",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "input_tokens": 2, "output_tokens": 1},
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "x_vendor_field": {"kept": True},
}


async def test_an_openai_answer_is_kept_exactly_as_the_upstream_sent_it(
    answering_with: AnsweringWith, make_provider: MakeProvider
) -> None:
    base_url = await answering_with("application/json", json.dumps(FINISHED_IN_BOTH_SHAPES).encode())
    completion = await make_provider("openai", base_url=f"{base_url}/v1").complete(HELLO, "any")
    assert completion.body == FINISHED_IN_BOTH_SHAPES
    assert (completion.input_tokens, completion.output_tokens) == (2, 1)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"id": "cut off'),
        ("application/json", b'[{"id": "a list"}]'),
        ("text/html", b"<html>502 from a proxy, sent as 200</html>"),
        ("application/json", json.dumps(FINISHED_IN_BOTH_SHAPES | {"score": math.nan}).encode()),
    ],
    ids=["cut-json", "json-array", "html", "finished-but-holding-nan"],
)
async def test_a_2xx_body_that_is_not_a_json_object_is_truncated(
    kind: str, content_type: str, body: bytes, answering_with: AnsweringWith, make_provider: MakeProvider
) -> None:
    base_url = await answering_with(content_type, body) + ("/v1" if kind == "openai" else "")
    with pytest.raises(Truncated) as raised:
        await make_provider(kind, base_url=base_url).complete(HELLO, "any")
    assert raised.value.provider == f"sim-{kind}"


async def test_rate_limit_headers_are_read_into_the_completion(
    kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    # One second's share of 600 rpm is 10 requests; after one, 9 remain: 540 in per-minute terms.
    fresh_sim.configure(models={"limited": {"rpm": 600, "tpm": 600_000}})
    completion = await make_provider(kind).complete(HELLO, "limited")

    limits = completion.rate_limits
    assert limits is not None
    assert limits.remaining_requests == 540
    assert limits.remaining_tokens is not None and 0 < limits.remaining_tokens < 600_000
    assert limits.reset_requests_s is not None and 0 <= limits.reset_requests_s <= 1.5
    assert limits.reset_tokens_s is not None and 0 <= limits.reset_tokens_s <= 1.5


async def test_a_model_without_limits_reports_no_rate_limits(kind: str, make_provider: MakeProvider) -> None:
    assert (await make_provider(kind).complete(HELLO, "unlimited")).rate_limits is None


async def test_one_adapter_carries_hundreds_of_calls_in_flight_at_once(
    kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    # Each call is held long enough (2 s) that all 200 are started before the first ends, even on a
    # busy 2-core machine where starting them takes most of a second; a pool capped at httpx's
    # default 100 connections would still never pass 100 in flight.
    calls_n, latency_s = 200, 2.0
    fresh_sim.configure(latency_ms=latency_s * 1000)
    provider = make_provider(kind)

    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(provider.complete(HELLO, "busy") for _ in range(calls_n)), return_exceptions=True),
        timeout=60,
    )
    elapsed_s = time.monotonic() - started

    failures = [result for result in results if not isinstance(result, Completion)]
    assert not failures, failures[:3]
    assert len(results) == calls_n
    assert elapsed_s < calls_n * latency_s / 10
    assert fresh_sim.stats()["max_in_flight"] >= 150


async def test_an_adapter_holds_at_most_max_connections_and_queues_the_rest(
    kind: str, fresh_sim: SimHandle, make_provider: MakeProvider
) -> None:
    # 120 calls through a pool of 40: the rest wait for a connection (within the pool timeout,
    # the provider's timeout) instead of failing, and the sim never sees more than 40 at once.
    fresh_sim.configure(latency_ms=300)
    provider = make_provider(kind, max_connections=40)

    results = await asyncio.wait_for(
        asyncio.gather(*(provider.complete(HELLO, "pooled") for _ in range(120)), return_exceptions=True),
        timeout=60,
    )

    failures = [result for result in results if not isinstance(result, Completion)]
    assert not failures, failures[:3]
    stats = fresh_sim.stats()
    assert stats["models"]["pooled"]["requests"] == 120
    assert 20 <= stats["max_in_flight"] <= 40


async def test_build_providers_serves_the_dev_config_from_the_sim(fresh_sim: SimHandle) -> None:
    providers = build_providers(GatewayConfig.model_validate(dev_config_dict(fresh_sim.url)))
    try:
        answers = {
            name: (await p.complete(HELLO, "m")).body["choices"][0]["message"]["content"]
            for name, p in providers.items()
        }
    finally:
        await close_providers(providers)
    assert answers == {"sim-openai": "echo: hello there", "sim-anthropic": "echo: hello there"}
