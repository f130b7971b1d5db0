"""The fleet-wide rate limiter on a real Redis: pacing, atomic multi-bucket booking, pauses.

Time is driven through the `now_ms` override, so nothing here sleeps; the concurrent tests run
many tasks, each booking over its own pooled connection, against one shared fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from core.ratelimit.limiter import (
    Bucket,
    Headroom,
    Place,
    RateLimiter,
    Reservation,
    model_bucket,
    provider_bucket,
    tenant_bucket,
)
from core.redis.keys import Keys

T0_MS = 1_800_000_000_000  # a fake "now": Redis time is never consulted where it is passed


@pytest.fixture
def limiter(async_redis_client: aioredis.Redis, keys: Keys) -> RateLimiter:
    """A limiter that allows a burst of 0.2 s of rate, so bursts are visible in these tests."""
    return RateLimiter(async_redis_client, keys, burst_s=0.2)


class FakeClock:
    """A clock shared by tasks that moves `step_ms` forward each time it is read."""

    def __init__(self, start_ms: int, step_ms: int) -> None:
        self._now_ms = start_ms
        self._step_ms = step_ms

    def tick(self) -> int:
        self._now_ms += self._step_ms
        return self._now_ms


def most_in_any_window(events: list[tuple[float, int]], window_ms: float) -> int:
    """The largest sum of amounts whose times fall within one closed window of `window_ms`."""
    events = sorted(events)
    best = total = end = 0
    for start_at, amount in events:
        while end < len(events) and events[end][0] <= start_at + window_ms:
            total += events[end][1]
            end += 1
        best = max(best, total)
        total -= amount
    return best


async def run_tasks(count: int, body: Callable[[int], Awaitable[None]]) -> None:
    """Run `body(0)` ... `body(count - 1)` at once; their Redis calls are in flight together."""
    await asyncio.gather(*(body(index) for index in range(count)))


def granted_at_ms(reservation: Reservation, now_ms: int) -> float:
    return now_ms + reservation.wait_s * 1000


async def test_idle_bucket_grants_its_burst_at_once_then_paces_requests_evenly(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)  # one request per 100 ms, burst 0.2 s

    waits = [(await limiter.reserve([bucket], 0, max_wait_s=1, now_ms=T0_MS)).wait_s for _ in range(5)]

    assert waits == [0.0, 0.0, 0.1, 0.2, 0.3]


async def test_by_default_calls_are_paced_one_at_a_time_with_no_burst(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    # A provider that enforces its quota per trailing second with a small tolerance sees any
    # burst plus arrival jitter as an overrun: by default nothing goes early.
    limiter = RateLimiter(async_redis_client, keys)
    bucket = provider_bucket("openai", rpm=600, tpm=None)

    waits = [(await limiter.reserve([bucket], 0, max_wait_s=1, now_ms=T0_MS)).wait_s for _ in range(4)]

    assert waits == [0.0, 0.1, 0.2, 0.3]


async def test_a_wait_longer_than_max_wait_is_refused_with_retry_after_and_books_nothing(
    limiter: RateLimiter,
) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)
    for _ in range(7):
        assert (await limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS)).granted

    refused = [await limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS) for _ in range(3)]

    assert [r.granted for r in refused] == [False, False, False]
    assert [r.retry_after_s for r in refused] == [0.6, 0.6, 0.6]
    assert not refused[0].paused
    later = await limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS + 100)
    assert later.granted and later.wait_s == 0.5


async def test_callers_refused_in_line_get_slots_one_cost_apart_and_book_nothing(
    limiter: RateLimiter,
) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=60_000)  # 100 ms per request, 1 ms per token
    for _ in range(3):
        assert (await limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS)).granted

    # The token dimension binds (100 ms per call, as many as the request dimension); the
    # first refused caller gets the time the budget frees, each next one a call's cost later.
    refused = [await limiter.reserve([bucket], 100, max_wait_s=0, line=True, now_ms=T0_MS) for _ in range(4)]

    assert [r.granted for r in refused] == [False] * 4
    assert [r.retry_after_s for r in refused] == [0.2, 0.3, 0.4, 0.5]
    # Nothing was booked: a caller without a place in line is still served where it conforms.
    assert (await limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS)).wait_s == 0.2


async def test_callers_coming_back_at_their_slots_are_granted_one_after_the_other(
    limiter: RateLimiter,
) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)
    for _ in range(7):  # booked 0.5 s ahead
        await limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS)
    slots = [
        (await limiter.reserve([bucket], 0, max_wait_s=0.1, line=True, now_ms=T0_MS)).retry_after_s
        for _ in range(20)
    ]

    returns = [
        await limiter.reserve([bucket], 0, max_wait_s=0.1, now_ms=T0_MS + round(s * 1000)) for s in slots
    ]

    assert all(r.granted for r in returns), [r.retry_after_s for r in returns if not r.granted]


async def test_a_tenant_held_back_by_its_own_limit_does_not_line_up_ahead_of_other_tenants(
    limiter: RateLimiter,
) -> None:
    provider = provider_bucket("p", rpm=1200, tpm=None)  # 50 ms per request
    slow_tenant = tenant_bucket("a", rpm=120, tpm=None)  # 500 ms per request
    other_tenant = tenant_bucket("b", rpm=None, tpm=None)
    assert (await limiter.reserve([provider, slow_tenant], 0, max_wait_s=0.1, now_ms=T0_MS)).granted
    held_back = [
        await limiter.reserve([provider, slow_tenant], 0, max_wait_s=0.1, line=True, now_ms=T0_MS)
        for _ in range(100)
    ]

    # b fills what the provider has free now; its next call waits for the provider alone.
    while (await limiter.reserve([provider, other_tenant], 0, max_wait_s=0, now_ms=T0_MS)).granted:
        pass
    refused = await limiter.reserve([provider, other_tenant], 0, max_wait_s=0, line=True, now_ms=T0_MS)

    assert not any(r.granted for r in held_back)
    assert held_back[-1].retry_after_s > 40  # a's own line: 100 calls at 2 a second
    assert not refused.granted and refused.retry_after_s <= 0.1


async def test_a_tenant_held_back_by_its_own_limit_takes_no_share_of_a_provider_that_refused_it_too(
    limiter: RateLimiter,
) -> None:
    provider = provider_bucket("p", rpm=1200, tpm=None)  # 50 ms per request
    slow_tenant = tenant_bucket("a", rpm=120, tpm=None)  # 500 ms per request
    a, b = Place("a"), Place("b")
    for _ in range(100):  # a's own line reaches 50 s ahead while the provider has room
        await limiter.reserve([provider, slow_tenant], 0, max_wait_s=0.1, line=True, place=a, now_ms=T0_MS)
    while (await limiter.reserve([provider], 0, max_wait_s=0.1, now_ms=T0_MS)).granted:
        pass  # b books the provider up, so it refuses a's next call as well

    refused_by_both = await limiter.reserve(
        [provider, slow_tenant], 0, max_wait_s=0.1, line=True, place=a, now_ms=T0_MS
    )
    b_slots: list[float] = []
    for _ in range(10):
        refused = await limiter.reserve([provider], 0, max_wait_s=0.1, line=True, place=b, now_ms=T0_MS)
        assert refused.retry_after_s is not None
        b_slots.append(refused.retry_after_s)

    assert refused_by_both.retry_after_s is not None and refused_by_both.retry_after_s > 40
    # a waits in its own line, not in the provider's: b, the only tenant waiting there, has it all.
    assert {round(later - earlier, 3) for earlier, later in itertools.pairwise(b_slots)} == {0.05}, b_slots


async def test_tenants_waiting_on_one_provider_share_it_by_weight_and_one_alone_gets_all(
    limiter: RateLimiter,
) -> None:
    shared, own = provider_bucket("p", rpm=600, tpm=None), provider_bucket("q", rpm=600, tpm=None)
    for bucket in (shared, own):  # 100 ms per request, booked up
        while (await limiter.reserve([bucket], 0, max_wait_s=0, now_ms=T0_MS)).granted:
            pass

    async def wait_in_line(bucket: Bucket, place: Place) -> float:
        refused = await limiter.reserve([bucket], 0, max_wait_s=0, line=True, place=place, now_ms=T0_MS)
        assert not refused.granted and refused.retry_after_s is not None
        return refused.retry_after_s

    slots: dict[str, list[float]] = {"light": [], "heavy": []}
    for _ in range(60):  # both keep asking, turn about
        for place in (Place("light", 1.0), Place("heavy", 3.0)):
            slots[place.owner].append(await wait_in_line(shared, place))
    alone = [await wait_in_line(own, Place("alone", 1.0)) for _ in range(10)]

    within_6_s = {owner: sum(s < 6 for s in owned) for owner, owned in slots.items()}
    assert 2.5 <= within_6_s["heavy"] / within_6_s["light"] <= 3.5, within_6_s
    assert sum(within_6_s.values()) <= 62  # never more than the provider's rate
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(alone)}
    assert gaps == {0.1}  # alone, one request's cost apart: the whole rate


async def test_the_line_is_forgotten_once_its_end_has_passed(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)
    for _ in range(7):
        await limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS)
    for _ in range(10):
        await limiter.reserve([bucket], 0, max_wait_s=0, line=True, now_ms=T0_MS)  # line ends at 1.6 s

    later = T0_MS + 10_000
    for _ in range(2):  # the burst
        assert (await limiter.reserve([bucket], 0, max_wait_s=0, now_ms=later)).granted
    refused = await limiter.reserve([bucket], 0, max_wait_s=0, line=True, now_ms=later)

    assert not refused.granted and refused.retry_after_s == 0.1


async def test_reserve_books_every_bucket_or_none(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=None)  # burst: 2 requests
    tenant = tenant_bucket("acme", rpm=60, tpm=None)  # one request a second
    assert (await limiter.reserve([provider, tenant], 0, max_wait_s=0, now_ms=T0_MS)).granted

    refused = await limiter.reserve([provider, tenant], 0, max_wait_s=0.5, now_ms=T0_MS)

    assert not refused.granted
    assert refused.retry_after_s == pytest.approx(1.0)
    # The refusal booked nothing in the provider bucket: its second request still goes at once.
    other_tenant = tenant_bucket("globex", rpm=60, tpm=None)
    assert (await limiter.reserve([provider, other_tenant], 0, max_wait_s=0, now_ms=T0_MS)).wait_s == 0
    assert (await limiter.reserve([provider], 0, max_wait_s=1, now_ms=T0_MS)).wait_s == pytest.approx(0.1)


async def test_the_slowest_bucket_sets_the_wait_and_every_bucket_is_booked_at_that_time(
    limiter: RateLimiter,
) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    model = model_bucket("openai", "gpt-4o-mini", rpm=None, tpm=6_000)  # 100 tokens a second
    first = await limiter.reserve([provider, model], 100, max_wait_s=5, now_ms=T0_MS)
    assert first.granted and first.wait_s == 0

    second = await limiter.reserve([provider, model], 100, max_wait_s=5, now_ms=T0_MS)

    # The model bucket (burst 20 tokens, in debt by 100) decides: 1 s.
    assert second.granted and second.wait_s == pytest.approx(1.0)
    # The provider bucket was booked at +1 s too, where the call really goes out.
    assert (await limiter.reserve([provider], 100, max_wait_s=2, now_ms=T0_MS)).wait_s == pytest.approx(1.0)


async def test_a_token_cost_above_the_burst_is_granted_and_later_calls_wait_it_out(
    limiter: RateLimiter,
) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)  # 1,000 tokens a second, burst 200

    big = await limiter.reserve([bucket], 5_000, max_wait_s=0, now_ms=T0_MS)
    small = await limiter.reserve([bucket], 100, max_wait_s=10, now_ms=T0_MS)
    another_big = await limiter.reserve([bucket], 5_000, max_wait_s=10, now_ms=T0_MS)

    assert big.granted and big.wait_s == 0
    assert small.granted and small.wait_s == pytest.approx(4.9)
    assert another_big.granted and another_big.wait_s == pytest.approx(5.1)


async def test_reconcile_returns_unused_tokens_at_once(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)
    reservation = await limiter.reserve([bucket], 2_000, max_wait_s=0, now_ms=T0_MS)
    assert not (await limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS + 100)).granted

    await limiter.reconcile(reservation, 150, now_ms=T0_MS + 100)

    # Charged 150 tokens at T0, the bucket is back to 150 of its 200-token burst at T0 + 100 ms.
    after = await limiter.reserve([bucket], 100, max_wait_s=0, now_ms=T0_MS + 100)
    assert after.granted and after.wait_s == 0


async def test_reconcile_never_fills_a_bucket_past_full(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)
    reservation = await limiter.reserve([bucket], 2_000, max_wait_s=0, now_ms=T0_MS)

    await limiter.reconcile(reservation, 0, now_ms=T0_MS + 1_000)

    # Back to full, not to 1,000 tokens of credit: only the 200-token burst goes at once.
    assert (await limiter.reserve([bucket], 200, max_wait_s=0, now_ms=T0_MS + 1_000)).granted
    assert not (await limiter.reserve([bucket], 1, max_wait_s=0, now_ms=T0_MS + 1_000)).granted


async def test_reconcile_charges_tokens_used_beyond_the_estimate(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    tenant = tenant_bucket("acme", rpm=None, tpm=60_000)
    reservation = await limiter.reserve([provider, tenant], 100, max_wait_s=0, now_ms=T0_MS)

    await limiter.reconcile(reservation, 600, now_ms=T0_MS)

    for bucket in (provider, tenant):
        follow_up = await limiter.reserve([bucket], 100, max_wait_s=1, now_ms=T0_MS)
        assert follow_up.wait_s == pytest.approx(0.5)


async def test_reconciling_a_refused_reservation_is_an_error(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)
    await limiter.reserve([bucket], 5_000, max_wait_s=0, now_ms=T0_MS)
    refused = await limiter.reserve([bucket], 100, max_wait_s=0, now_ms=T0_MS)

    with pytest.raises(ValueError, match="granted"):
        await limiter.reconcile(refused, 0)


async def test_shorter_pause_never_shortens_a_longer_one(limiter: RateLimiter) -> None:
    long_deadline_s = await limiter.pause("openai", 30, now_ms=T0_MS)
    short_deadline_s = await limiter.pause("openai", 5, now_ms=T0_MS + 1_000)

    assert long_deadline_s == short_deadline_s == (T0_MS + 30_000) / 1000
    assert await limiter.paused_until("openai", now_ms=T0_MS + 10_000) == (T0_MS + 30_000) / 1000
    assert await limiter.pause("openai", 60, now_ms=T0_MS + 1_000) == (T0_MS + 61_000) / 1000


async def test_a_paused_provider_refuses_reservations_until_its_deadline(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    model = model_bucket("openai", "gpt-4o-mini", rpm=None, tpm=None)
    await limiter.pause("openai", 12, now_ms=T0_MS)

    during = await limiter.reserve([provider, model], 10, max_wait_s=10, now_ms=T0_MS + 2_000)
    after = await limiter.reserve([provider, model], 10, max_wait_s=10, now_ms=T0_MS + 12_000)

    assert not during.granted and during.paused and during.retry_after_s == 10
    assert after.granted and after.wait_s == 0
    assert await limiter.paused_until("openai", now_ms=T0_MS + 12_000) is None
    assert (
        await limiter.reserve([tenant_bucket("acme", rpm=60, tpm=None)], 0, max_wait_s=0, now_ms=T0_MS)
    ).granted


async def test_one_models_pause_leaves_the_providers_other_models_running(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=None, tpm=None)
    mini = model_bucket("openai", "gpt-4o-mini", rpm=None, tpm=6_000)
    big = model_bucket("openai", "gpt-4o", rpm=None, tpm=6_000)
    await limiter.pause("openai/gpt-4o-mini", 12, now_ms=T0_MS)

    paused = await limiter.reserve([provider, mini], 10, max_wait_s=1, now_ms=T0_MS + 2_000)
    running = await limiter.reserve([provider, big], 10, max_wait_s=1, now_ms=T0_MS + 2_000)
    await limiter.pause("openai", 12, now_ms=T0_MS)
    whole_provider = await limiter.reserve([provider, big], 10, max_wait_s=1, now_ms=T0_MS + 2_000)

    assert not paused.granted and paused.paused
    assert running.granted
    assert not whole_provider.granted and whole_provider.paused


async def test_a_pause_on_redis_time_expires_by_itself(
    limiter: RateLimiter, async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    seconds, micros = await async_redis_client.time()
    now_s = seconds + micros / 1_000_000

    deadline_s = await limiter.pause("anthropic", 20)

    assert deadline_s == pytest.approx(now_s + 20, abs=0.5)
    assert await limiter.paused_until("anthropic") == deadline_s
    assert 19_000 < await async_redis_client.pttl(keys.provider_pause("anthropic")) <= 20_000
    assert await limiter.paused_until("openai") is None


async def test_shortest_pause_left_is_the_soonest_end_on_redis_clock_or_zero(limiter: RateLimiter) -> None:
    await limiter.pause("anthropic", 20)
    await limiter.pause("openai", 5)

    assert 4 < await limiter.shortest_pause_left_s(["anthropic", "openai"]) <= 5
    assert 19 < await limiter.shortest_pause_left_s(["anthropic"]) <= 20
    assert await limiter.shortest_pause_left_s(["anthropic", "not-paused"]) == 0
    assert await limiter.shortest_pause_left_s([]) == 0


async def test_longest_pause_left_is_the_latest_end_on_redis_clock_or_zero(limiter: RateLimiter) -> None:
    await limiter.pause("anthropic", 20)
    await limiter.pause("openai", 5)

    assert 19 < await limiter.longest_pause_left_s(["anthropic", "openai"]) <= 20
    assert 4 < await limiter.longest_pause_left_s(["openai", "not-paused"]) <= 5
    assert await limiter.longest_pause_left_s(["not-paused"]) == 0
    assert await limiter.longest_pause_left_s([]) == 0


async def test_a_pause_set_during_a_granted_wait_is_seen_before_the_call(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=60, tpm=None)  # one a second, burst 0.2 s: no second one
    assert (await limiter.reserve([bucket], 0, max_wait_s=0)).granted
    waiting = await limiter.reserve([bucket], 0, max_wait_s=2)
    assert waiting.granted and waiting.wait_s > 0

    await limiter.pause("openai", 10)  # another worker's call was answered 429 meanwhile

    providers = {b.provider for b in waiting.buckets if b.provider is not None}
    assert 9 < await limiter.longest_pause_left_s(providers) <= 10


async def test_headroom_is_the_minute_budget_left_after_recent_bookings(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=60_000)
    minute_start = T0_MS - T0_MS % 60_000
    assert await limiter.headroom(bucket, now_ms=minute_start) == Headroom(600, 60_000)
    for _ in range(10):
        reservation = await limiter.reserve([bucket], 1_000, max_wait_s=60, now_ms=minute_start + 15_000)
        await limiter.reconcile(reservation, 400, now_ms=minute_start + 15_000)

    same_minute = await limiter.headroom(bucket, now_ms=minute_start + 30_000)
    half_into_next = await limiter.headroom(bucket, now_ms=minute_start + 90_000)
    two_minutes_on = await limiter.headroom(bucket, now_ms=minute_start + 150_000)

    assert (same_minute.rpm_available, same_minute.tpm_available) == (590, 56_000)
    assert (half_into_next.rpm_available, half_into_next.tpm_available) == (595, 58_000)
    assert (two_minutes_on.rpm_available, two_minutes_on.tpm_available) == (600, 60_000)
    assert await limiter.headroom(tenant_bucket("acme", rpm=None, tpm=None)) == Headroom(None, None)


async def test_interactive_request_books_behind_at_most_the_batch_horizon(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=60_000)
    batch_grants = 0
    while (await limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS)).granted:
        batch_grants += 1
    assert batch_grants == 7  # 0.2 s of burst and 0.5 s of horizon at 10 requests a second

    interactive = await limiter.reserve([bucket], 100, max_wait_s=10, now_ms=T0_MS)

    assert interactive.granted and interactive.wait_s == pytest.approx(0.6)
    # The batch queued behind stays refused while the interactive booking stands.
    assert not (await limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS + 100)).granted


def test_bucket_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tpm"):
        Bucket("provider:openai", rpm=600, tpm=0)


async def test_reserving_on_redis_time_paces_like_the_fake_clock(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=60, tpm=None)  # one a second, burst 0.2 s: no second one

    first = await limiter.reserve([bucket], 0, max_wait_s=0)
    second = await limiter.reserve([bucket], 0, max_wait_s=2)

    assert first.granted and first.wait_s == 0
    assert second.granted and 0.7 < second.wait_s <= 1.0


async def test_batch_reservations_never_exceed_one_second_share_plus_burst(limiter: RateLimiter) -> None:
    """30 tasks, demand far above the rate: paced within rate + burst, and the rate is used."""
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    tenants = [tenant_bucket(name, rpm=None, tpm=45_000) for name in ("acme", "globex", "initech")]
    clock = FakeClock(T0_MS, step_ms=2)
    end_ms = T0_MS + 12_000
    granted: list[tuple[float, int]] = []

    async def worker(index: int) -> None:
        rng = random.Random(index)
        while (now_ms := clock.tick()) < end_ms:
            tokens = rng.randint(20, 180)
            buckets = [provider, rng.choice(tenants)]
            reservation = await limiter.reserve(buckets, tokens, max_wait_s=0.5, now_ms=now_ms)
            if reservation.granted:
                granted.append((granted_at_ms(reservation, now_ms), tokens))

    await run_tasks(30, worker)

    requests = [(at, 1) for at, _ in granted]
    assert most_in_any_window(requests, 1_000) <= 10 + 2
    assert most_in_any_window(granted, 1_000) <= 1_000 + 200
    span_ms = end_ms - T0_MS
    used_requests = sum(1 for at, _ in granted if at <= end_ms)
    used_tokens = sum(tokens for at, tokens in granted if at <= end_ms)
    busiest_share = max(used_requests / (10 * span_ms / 1000), used_tokens / (1_000 * span_ms / 1000))
    assert busiest_share >= 0.9


def provider_refusals(charges: list[tuple[float, int]], tpm: int, capacity_s: float) -> int:
    """Replay charges (+) and refunds (-) through a provider bucket of `capacity_s` of the rate.

    Like the providers and jobgate's sim: refilled continuously, never past full; a call is
    admitted when the bucket holds its cost (or is full, for a cost above the capacity).
    """
    per_ms = tpm / 60_000
    capacity = per_ms * 1_000 * capacity_s
    level, last_ms, refused = capacity, float(T0_MS), 0
    for at_ms, amount in sorted(charges, key=lambda charge: (charge[0], -charge[1])):
        level = min(capacity, level + (at_ms - last_ms) * per_ms)
        last_ms = at_ms
        if amount > 0 and level < min(amount, capacity) - 1e-6:
            refused += 1
        level = min(capacity, level - amount)
    return refused


@pytest.mark.parametrize(("overestimate", "min_share"), [(1.2, 0.9), (3.0, None)])
async def test_reconciled_reservations_never_overdraw_a_refunding_provider(
    limiter: RateLimiter, overestimate: float, min_share: float | None
) -> None:
    """30 tasks; each call is settled 50-400 ms after it goes out.

    The provider charges the estimate when a call arrives and refunds the unused part when it
    ends (as Anthropic does with max_tokens), in a bucket of one second's capacity. With
    estimates 20% high the rate is still used; with any estimate nothing is ever refused.
    """
    tpm = 60_000
    bucket = provider_bucket("anthropic", rpm=6_000, tpm=tpm)
    clock = FakeClock(T0_MS, step_ms=2)
    end_ms = T0_MS + 10_000
    charges: list[tuple[float, int]] = []  # (when, +estimate) as a call goes out, (when, -unused) after

    async def worker(index: int) -> None:
        rng = random.Random(index)
        in_flight: list[tuple[float, Reservation, int]] = []
        while (now_ms := clock.tick()) < end_ms:
            for call in [call for call in in_flight if call[0] <= now_ms]:
                in_flight.remove(call)
                _, reservation, actual = call
                await limiter.reconcile(reservation, actual, now_ms=now_ms)
                charges.append((now_ms, actual - reservation.tokens))
            actual = rng.randint(10, 100)
            estimate = round(overestimate * actual)
            reservation = await limiter.reserve([bucket], estimate, max_wait_s=0.5, now_ms=now_ms)
            if reservation.granted:
                sent_at = granted_at_ms(reservation, now_ms)
                in_flight.append((sent_at + rng.uniform(50, 400), reservation, actual))
                charges.append((sent_at, reservation.tokens))

    await run_tasks(30, worker)

    assert provider_refusals(charges, tpm, capacity_s=1.0) == 0
    assert any(amount < 0 for _, amount in charges)
    if min_share is not None:
        net_tokens = sum(amount for at_ms, amount in charges if at_ms <= end_ms)
        assert net_tokens >= min_share * tpm / 60_000 * (end_ms - T0_MS)
