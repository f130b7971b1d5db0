"""The gate on a real Redis: the breaker, the provider's pause and the reservation in one
script (core/ratelimit/gate.py), composed so that a refusing breaker books nothing and a probe
refused budget is handed back at once. Each part's own rules are specified in
test_breaker.py and test_rate_limit.py; this file specifies the composition."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from core.config import BreakerConfig
from core.ratelimit.gate import Gate, GateAnswer
from core.ratelimit.limiter import RateLimiter, provider_bucket
from core.redis.breaker import CircuitBreaker
from core.redis.keys import Keys
from tests.processes import wait_until

TARGET = "sim/echo"
CONFIG = BreakerConfig(failures=2, window_s=60, cooldown_s=0.3)


def parts(client: aioredis.Redis, keys: Keys) -> tuple[Gate, CircuitBreaker, RateLimiter]:
    breaker, limiter = CircuitBreaker(client, keys), RateLimiter(client, keys)
    return Gate(breaker, limiter), breaker, limiter


async def open_gate(gate: Gate, rpm: int) -> GateAnswer:
    return await gate.open(
        TARGET,
        CONFIG,
        [provider_bucket("sim", rpm=rpm, tpm=None)],
        10,
        probe_timeout_s=30,
        max_wait_s=0.5,
        line=True,
    )


async def test_a_closed_breaker_with_budget_books_the_call(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    gate, _, limiter = parts(async_redis_client, keys)

    answer = await open_gate(gate, rpm=60)

    assert answer.permit.allowed and not answer.permit.probe
    assert answer.reservation is not None and answer.reservation.granted
    assert (await limiter.headroom(provider_bucket("sim", rpm=60, tpm=None))).rpm_available == 59


async def test_an_open_breaker_books_nothing(async_redis_client: aioredis.Redis, keys: Keys) -> None:
    gate, breaker, limiter = parts(async_redis_client, keys)
    for _ in range(CONFIG.failures):
        await breaker.record_failure(TARGET, CONFIG, probe=False)

    answer = await open_gate(gate, rpm=60)

    assert not answer.permit.allowed and answer.reservation is None
    assert (await limiter.headroom(provider_bucket("sim", rpm=60, tpm=None))).rpm_available == 60


async def test_a_paused_provider_is_refused_with_the_pause_left(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    gate, _, limiter = parts(async_redis_client, keys)
    await limiter.pause("sim", 30)

    answer = await open_gate(gate, rpm=60)

    reservation = answer.reservation
    assert reservation is not None
    assert not reservation.granted and reservation.paused
    assert 25 < reservation.retry_after_s <= 30


async def test_a_probe_refused_budget_is_handed_back_so_another_caller_can_probe(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    gate, breaker, limiter = parts(async_redis_client, keys)
    for _ in range(CONFIG.failures):
        await breaker.record_failure(TARGET, CONFIG, probe=False)
    loop = asyncio.get_running_loop()

    def cooled() -> bool:
        return asyncio.run_coroutine_threadsafe(breaker.state(TARGET), loop).result(5) == "half_open"

    await asyncio.to_thread(wait_until, cooled, timeout_s=5, what="the breaker's cool-down to end")
    # At 1 rpm, one booking leaves no budget for the next minute.
    assert (await limiter.reserve([provider_bucket("sim", rpm=1, tpm=None)], 0, max_wait_s=0)).granted

    refused = await open_gate(gate, rpm=1)

    assert refused.permit.allowed and refused.permit.probe
    assert refused.reservation is not None and not refused.reservation.granted
    again = await breaker.allow(TARGET, CONFIG)
    assert again.allowed and again.probe  # handed back at once, not held until its timeout


async def test_a_redis_that_lost_its_scripts_still_answers_the_gate(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    # A Redis restarted empty knows no script: the call refused NOSCRIPT is run again with
    # EVAL (which loads it), and the one after finds it loaded.
    gate, _, limiter = parts(async_redis_client, keys)
    await async_redis_client.script_flush()

    first = await open_gate(gate, rpm=6000)
    second = await open_gate(gate, rpm=6000)

    assert first.reservation is not None and first.reservation.granted
    assert second.reservation is not None and second.reservation.granted
    assert (await limiter.headroom(provider_bucket("sim", rpm=6000, tpm=None))).rpm_available == 5998
