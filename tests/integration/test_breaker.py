"""The fleet-wide circuit breaker on a real Redis: opening, cool-down, one probe, stats.

Time is driven through the `now_ms` override, so nothing here sleeps; concurrent callers are
tasks on separate clients, as workers of a fleet are.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from core.config import BreakerConfig
from core.redis.breaker import BreakerStats, CircuitBreaker, Permit
from core.redis.keys import Keys

T0_MS = 1_800_000_000_000
TARGET = "openai/gpt-4o-mini"
CONFIG = BreakerConfig(failures=5, window_s=60, cooldown_s=60)


@pytest.fixture
def breaker(async_redis_client: aioredis.Redis, keys: Keys) -> CircuitBreaker:
    return CircuitBreaker(async_redis_client, keys)


async def open_breaker(breaker: CircuitBreaker, at_ms: int = T0_MS) -> None:
    for _ in range(CONFIG.failures):
        await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=at_ms)
    assert await breaker.state(TARGET, now_ms=at_ms) == "open"


async def test_a_closed_breaker_allows_every_call(breaker: CircuitBreaker) -> None:
    permit = await breaker.allow(TARGET, CONFIG, now_ms=T0_MS)

    assert permit == Permit(allowed=True, probe=False, state="closed", retry_after_s=None)


async def test_breaker_opens_on_the_fifth_failure_within_the_window(breaker: CircuitBreaker) -> None:
    states = [
        await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=T0_MS + i * 10_000) for i in range(5)
    ]

    assert states == ["closed", "closed", "closed", "closed", "open"]
    permit = await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 40_000 + 1_500)
    assert permit == Permit(allowed=False, probe=False, state="open", retry_after_s=58.5)


async def test_failures_spread_wider_than_the_window_do_not_open_it(breaker: CircuitBreaker) -> None:
    for i in range(12):
        state = await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=T0_MS + i * 15_001)
        assert state == "closed"

    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 200_000)).allowed


async def test_successes_between_failures_do_not_reset_the_window(breaker: CircuitBreaker) -> None:
    for i in range(5):
        await breaker.record_success(TARGET, CONFIG, probe=False, now_ms=T0_MS + i * 1_000)
        await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=T0_MS + i * 1_000 + 500)

    assert await breaker.state(TARGET, now_ms=T0_MS + 5_000) == "open"


async def test_after_the_cooldown_one_caller_gets_the_probe_and_the_others_wait(
    breaker: CircuitBreaker,
) -> None:
    await open_breaker(breaker)
    assert not (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 59_999)).allowed
    assert await breaker.state(TARGET, now_ms=T0_MS + 60_000) == "half_open"

    probe = await breaker.allow(TARGET, CONFIG, probe_timeout_s=30, now_ms=T0_MS + 60_000)
    other = await breaker.allow(TARGET, CONFIG, probe_timeout_s=30, now_ms=T0_MS + 61_000)

    assert probe == Permit(allowed=True, probe=True, state="half_open", retry_after_s=None)
    assert other == Permit(allowed=False, probe=False, state="half_open", retry_after_s=29.0)


async def test_half_open_breaker_lets_exactly_one_probe_through_across_clients(
    breaker: CircuitBreaker, redis_url: str, keys: Keys
) -> None:
    await open_breaker(breaker)
    clients = [aioredis.Redis.from_url(redis_url, socket_timeout=5) for _ in range(10)]
    try:
        # 50 callers on 10 clients, each call on its own connection, all in flight at once.
        fleet = [CircuitBreaker(client, keys) for client in clients]
        permits: list[Permit] = await asyncio.gather(
            *(fleet[i % len(fleet)].allow(TARGET, CONFIG, now_ms=T0_MS + 60_001) for i in range(50))
        )
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))

    assert len(permits) == 50
    assert sum(p.allowed for p in permits) == 1
    assert sum(p.probe for p in permits) == 1
    assert {p.state for p in permits} == {"half_open"}


async def test_probe_success_closes_the_breaker_and_clears_the_failure_window(
    breaker: CircuitBreaker,
) -> None:
    await open_breaker(breaker)
    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_000)).probe

    state = await breaker.record_success(TARGET, CONFIG, probe=True, now_ms=T0_MS + 61_000)

    assert state == "closed"
    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 61_001)).allowed
    for _ in range(CONFIG.failures - 1):
        await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=T0_MS + 62_000)
    assert await breaker.state(TARGET, now_ms=T0_MS + 62_000) == "closed"


async def test_probe_failure_reopens_the_breaker_for_another_cooldown(breaker: CircuitBreaker) -> None:
    await open_breaker(breaker)
    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_000)).probe

    state = await breaker.record_failure(TARGET, CONFIG, probe=True, now_ms=T0_MS + 65_000)

    assert state == "open"
    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 65_000)).retry_after_s == 60
    assert not (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 124_999)).allowed
    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 125_000)).probe


async def test_a_probe_whose_holder_never_reports_is_replaced_after_the_probe_timeout(
    breaker: CircuitBreaker,
) -> None:
    await open_breaker(breaker)
    assert (
        await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_000)
    ).probe  # default timeout: the cool-down

    assert not (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 119_999)).allowed
    second = await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 120_000)

    assert second.allowed and second.probe
    assert not (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 120_001)).allowed


async def test_a_released_probe_passes_to_the_next_caller_at_once(breaker: CircuitBreaker) -> None:
    await open_breaker(breaker)
    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_000)).probe

    assert await breaker.release_probe(TARGET, now_ms=T0_MS + 60_100) == "half_open"

    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_200)).probe
    assert not (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_300)).allowed


async def test_a_late_failure_of_a_call_started_before_opening_does_not_extend_the_cooldown(
    breaker: CircuitBreaker,
) -> None:
    await open_breaker(breaker)

    assert await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=T0_MS + 30_000) == "open"
    assert await breaker.record_success(TARGET, CONFIG, probe=False, now_ms=T0_MS + 31_000) == "open"

    assert (await breaker.allow(TARGET, CONFIG, now_ms=T0_MS + 60_000)).probe


async def test_a_late_probe_report_does_not_undo_the_newer_probe_outcome(breaker: CircuitBreaker) -> None:
    await open_breaker(breaker)
    assert (await breaker.allow(TARGET, CONFIG, probe_timeout_s=10, now_ms=T0_MS + 60_000)).probe
    assert (await breaker.allow(TARGET, CONFIG, probe_timeout_s=10, now_ms=T0_MS + 70_000)).probe
    assert await breaker.record_failure(TARGET, CONFIG, probe=True, now_ms=T0_MS + 71_000) == "open"

    assert await breaker.record_success(TARGET, CONFIG, probe=True, now_ms=T0_MS + 72_000) == "open"


async def test_stats_count_recent_outcomes_for_the_error_rate(breaker: CircuitBreaker) -> None:
    minute_start = T0_MS - T0_MS % 60_000
    for i in range(6):
        await breaker.record_success(TARGET, CONFIG, probe=False, now_ms=minute_start + i)
    for i in range(2):
        await breaker.record_failure(TARGET, CONFIG, probe=False, now_ms=minute_start + 10 + i)

    now = await breaker.stats(TARGET, now_ms=minute_start + 30_000)
    half_a_minute_on = await breaker.stats(TARGET, now_ms=minute_start + 90_000)
    later = await breaker.stats(TARGET, now_ms=minute_start + 180_000)

    assert now == BreakerStats(state="closed", recent_successes=6, recent_failures=2)
    assert now.error_rate == 0.25
    assert (half_a_minute_on.recent_successes, half_a_minute_on.recent_failures) == (3, 1)
    assert later.error_rate is None


async def test_breakers_of_different_targets_are_independent(breaker: CircuitBreaker) -> None:
    await open_breaker(breaker)

    assert (await breaker.allow("anthropic/claude-haiku-4-5", CONFIG, now_ms=T0_MS)).allowed
    assert (await breaker.stats("anthropic/claude-haiku-4-5", now_ms=T0_MS)).state == "closed"


async def test_breaker_on_redis_time_opens_and_refuses(breaker: CircuitBreaker) -> None:
    config = BreakerConfig(failures=2, window_s=10, cooldown_s=30)
    await breaker.record_failure(TARGET, config, probe=False)
    await breaker.record_failure(TARGET, config, probe=False)

    permit = await breaker.allow(TARGET, config)

    assert not permit.allowed and permit.state == "open"
    assert permit.retry_after_s is not None and 29 < permit.retry_after_s <= 30
