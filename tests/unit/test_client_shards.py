"""Specifications of how one adapter spreads its calls over several small connection pools
(`ClientShards`) and paces the connections it opens (`ConnectGate`), without a network: the
shards' clients are stand-ins, and the gate is driven through httpcore's `trace` extension as
httpcore drives it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from core.config import ProviderConfig
from core.providers.base import ClientShards, ConnectGate

CONFIG = ProviderConfig.model_validate(
    {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "timeout_s": 10}
)


def pools_of(
    max_connections: int, shard_connections: int
) -> tuple[ClientShards[httpx2.AsyncClient], list[Any]]:
    """Shards whose "SDK client" is the shard's own `httpx2.AsyncClient`; also that list."""
    made: list[httpx2.AsyncClient] = []

    def make_client(http_client: httpx2.AsyncClient, timeout: httpx2.Timeout) -> httpx2.AsyncClient:
        made.append(http_client)
        return http_client

    shards = ClientShards(
        httpx2.AsyncClient, make_client, CONFIG, max_connections, shard_connections=shard_connections
    )
    return shards, made


async def test_pools_are_sized_evenly_and_hold_max_connections_between_them() -> None:
    shards, made = pools_of(1016, 48)
    assert (len(made), shards.connections_per_shard) == (22, 47)
    assert len(shards.in_flight) * shards.connections_per_shard >= 1016
    await shards.aclose()


async def test_calls_made_one_at_a_time_all_use_the_first_shard() -> None:
    shards, made = pools_of(100, 25)

    async def which(client: httpx2.AsyncClient) -> int:
        return made.index(client)

    assert [await shards.call(which) for _ in range(5)] == [0] * 5
    await shards.aclose()


async def test_concurrent_calls_go_to_the_least_busy_shard() -> None:
    shards, made = pools_of(100, 25)
    release = asyncio.Event()

    async def held(client: httpx2.AsyncClient) -> int:
        await release.wait()
        return made.index(client)

    calls = [asyncio.create_task(shards.call(held)) for _ in range(6)]
    await asyncio.sleep(0)
    assert shards.in_flight == (2, 2, 1, 1)
    release.set()
    assert sorted(await asyncio.gather(*calls)) == [0, 0, 1, 1, 2, 3]
    assert shards.in_flight == (0, 0, 0, 0)
    await shards.aclose()


async def test_a_failed_call_leaves_its_shard_no_busier() -> None:
    shards, _ = pools_of(100, 25)

    async def failing(client: httpx2.AsyncClient) -> None:
        raise httpx2.ConnectError("refused")

    with pytest.raises(httpx2.ConnectError):
        await shards.call(failing)
    assert shards.in_flight == (0, 0, 0, 0)
    await shards.aclose()


async def test_closing_the_shards_closes_every_pool() -> None:
    shards, made = pools_of(100, 25)
    await shards.aclose()
    assert [client.is_closed for client in made] == [True] * 4


# --- ConnectGate -------------------------------------------------------------------------------

Trace = Any


async def traced(gate: ConnectGate) -> Trace:
    """The `trace` callback the gate installs on a request, as httpcore would find it."""
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    await gate.trace_request(request)
    return request.extensions["trace"]


async def opening(trace: Trace) -> None:
    await trace("connection.connect_tcp.started", {"timeout": 5.0})


async def test_the_gate_opens_at_most_its_limit_of_connections_at_once_and_the_next_when_one_ends() -> None:
    gate = ConnectGate(2, wait_s=10)
    traces = [await traced(gate) for _ in range(3)]
    starts = [asyncio.create_task(opening(trace)) for trace in traces]
    await asyncio.sleep(0.01)
    assert [start.done() for start in starts] == [True, True, False]

    await traces[0]("connection.connect_tcp.failed", {"exception": OSError("refused")})
    await asyncio.wait_for(starts[2], timeout=5)
    await traces[1]("connection.connect_tcp.complete", {"return_value": None})
    await traces[2]("connection.connect_tcp.complete", {"return_value": None})


async def test_the_gate_ignores_the_steps_of_a_request_on_an_open_connection() -> None:
    gate = ConnectGate(1, wait_s=10)
    trace = await traced(gate)
    await opening(trace)
    await asyncio.wait_for(trace("http11.send_request_headers.started", {}), timeout=5)
    await asyncio.wait_for(trace("http11.send_request_headers.complete", {}), timeout=5)


async def test_a_wait_for_a_turn_longer_than_the_pool_timeout_is_a_pool_timeout() -> None:
    gate = ConnectGate(1, wait_s=0.05)
    await opening(await traced(gate))
    with pytest.raises(httpx2.PoolTimeout):
        await opening(await traced(gate))


async def test_a_call_cancelled_while_waiting_for_its_turn_takes_no_turn() -> None:
    gate = ConnectGate(1, wait_s=10)
    holder = await traced(gate)
    await opening(holder)
    waiting = asyncio.create_task(opening(await traced(gate)))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    await holder("connection.connect_tcp.complete", {"return_value": None})
    await asyncio.wait_for(opening(await traced(gate)), timeout=5)
