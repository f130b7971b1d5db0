"""The fleet-wide rate limiter on a real Redis: pacing, atomic multi-bucket booking, pauses.

Time is driven through the `now_ms` override, so nothing here sleeps; the concurrent tests run
many threads against one shared fake clock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
import redis

from core.redis.keys import Keys
from core.redis.rate_limit import (
    Bucket,
    Headroom,
    RateLimiter,
    Reservation,
    model_bucket,
    provider_bucket,
    tenant_bucket,
)

T0_MS = 1_800_000_000_000  # a fake "now": Redis time is never consulted where it is passed


@pytest.fixture
def limiter(redis_client: redis.Redis, keys: Keys) -> RateLimiter:
    return RateLimiter(redis_client, keys)


class FakeClock:
    """A clock shared by threads that moves `step_ms` forward each time it is read."""

    def __init__(self, start_ms: int, step_ms: int) -> None:
        self._now_ms = start_ms
        self._step_ms = step_ms
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
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


def run_threads(count: int, body: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            body()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def granted_at_ms(reservation: Reservation, now_ms: int) -> float:
    return now_ms + reservation.wait_s * 1000


def test_idle_bucket_grants_its_burst_at_once_then_paces_requests_evenly(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)  # one request per 100 ms, burst 0.2 s

    waits = [limiter.reserve([bucket], 0, max_wait_s=1, now_ms=T0_MS).wait_s for _ in range(5)]

    assert waits == [0.0, 0.0, 0.1, 0.2, 0.3]


def test_a_wait_longer_than_max_wait_is_refused_with_retry_after_and_books_nothing(
    limiter: RateLimiter,
) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)
    for _ in range(7):
        assert limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS).granted

    refused = [limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS) for _ in range(3)]

    assert [r.granted for r in refused] == [False, False, False]
    assert [r.retry_after_s for r in refused] == [0.6, 0.6, 0.6]
    assert not refused[0].paused
    later = limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS + 100)
    assert later.granted and later.wait_s == 0.5


def test_callers_refused_in_line_get_slots_one_cost_apart_and_book_nothing(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=60_000)  # 100 ms per request, 1 ms per token
    for _ in range(3):
        assert limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS).granted

    # The token dimension binds (100 ms per call, as many as the request dimension); the
    # first refused caller gets the time the budget frees, each next one a call's cost later.
    refused = [limiter.reserve([bucket], 100, max_wait_s=0, line=True, now_ms=T0_MS) for _ in range(4)]

    assert [r.granted for r in refused] == [False] * 4
    assert [r.retry_after_s for r in refused] == [0.2, 0.3, 0.4, 0.5]
    # Nothing was booked: a caller without a place in line is still served where it conforms.
    assert limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS).wait_s == 0.2


def test_callers_coming_back_at_their_slots_are_granted_one_after_the_other(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)
    for _ in range(7):  # booked 0.5 s ahead
        limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS)
    slots = [
        limiter.reserve([bucket], 0, max_wait_s=0.1, line=True, now_ms=T0_MS).retry_after_s for _ in range(20)
    ]

    returns = [limiter.reserve([bucket], 0, max_wait_s=0.1, now_ms=T0_MS + round(s * 1000)) for s in slots]

    assert all(r.granted for r in returns), [r.retry_after_s for r in returns if not r.granted]


def test_the_line_is_forgotten_once_its_end_has_passed(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=None)
    for _ in range(7):
        limiter.reserve([bucket], 0, max_wait_s=0.5, now_ms=T0_MS)
    for _ in range(10):
        limiter.reserve([bucket], 0, max_wait_s=0, line=True, now_ms=T0_MS)  # line ends at 1.6 s

    later = T0_MS + 10_000
    for _ in range(2):  # the burst
        assert limiter.reserve([bucket], 0, max_wait_s=0, now_ms=later).granted
    refused = limiter.reserve([bucket], 0, max_wait_s=0, line=True, now_ms=later)

    assert not refused.granted and refused.retry_after_s == 0.1


def test_reserve_books_every_bucket_or_none(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=None)  # burst: 2 requests
    tenant = tenant_bucket("acme", rpm=60, tpm=None)  # one request a second
    assert limiter.reserve([provider, tenant], 0, max_wait_s=0, now_ms=T0_MS).granted

    refused = limiter.reserve([provider, tenant], 0, max_wait_s=0.5, now_ms=T0_MS)

    assert not refused.granted
    assert refused.retry_after_s == pytest.approx(1.0)
    # The refusal booked nothing in the provider bucket: its second request still goes at once.
    other_tenant = tenant_bucket("globex", rpm=60, tpm=None)
    assert limiter.reserve([provider, other_tenant], 0, max_wait_s=0, now_ms=T0_MS).wait_s == 0
    assert limiter.reserve([provider], 0, max_wait_s=1, now_ms=T0_MS).wait_s == pytest.approx(0.1)


def test_the_slowest_bucket_sets_the_wait_and_every_bucket_is_booked_at_that_time(
    limiter: RateLimiter,
) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    model = model_bucket("openai", "gpt-4o-mini", rpm=None, tpm=6_000)  # 100 tokens a second
    first = limiter.reserve([provider, model], 100, max_wait_s=5, now_ms=T0_MS)
    assert first.granted and first.wait_s == 0

    second = limiter.reserve([provider, model], 100, max_wait_s=5, now_ms=T0_MS)

    # The model bucket (burst 20 tokens, in debt by 100) decides: 1 s.
    assert second.granted and second.wait_s == pytest.approx(1.0)
    # The provider bucket was booked at +1 s too, where the call really goes out.
    assert limiter.reserve([provider], 100, max_wait_s=2, now_ms=T0_MS).wait_s == pytest.approx(1.0)


def test_a_token_cost_above_the_burst_is_granted_and_later_calls_wait_it_out(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)  # 1,000 tokens a second, burst 200

    big = limiter.reserve([bucket], 5_000, max_wait_s=0, now_ms=T0_MS)
    small = limiter.reserve([bucket], 100, max_wait_s=10, now_ms=T0_MS)
    another_big = limiter.reserve([bucket], 5_000, max_wait_s=10, now_ms=T0_MS)

    assert big.granted and big.wait_s == 0
    assert small.granted and small.wait_s == pytest.approx(4.9)
    assert another_big.granted and another_big.wait_s == pytest.approx(5.1)


def test_reconcile_returns_unused_tokens_at_once(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)
    reservation = limiter.reserve([bucket], 2_000, max_wait_s=0, now_ms=T0_MS)
    assert not limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS + 100).granted

    limiter.reconcile(reservation, 150, now_ms=T0_MS + 100)

    # Charged 150 tokens at T0, the bucket is back to 150 of its 200-token burst at T0 + 100 ms.
    after = limiter.reserve([bucket], 100, max_wait_s=0, now_ms=T0_MS + 100)
    assert after.granted and after.wait_s == 0


def test_reconcile_never_fills_a_bucket_past_full(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)
    reservation = limiter.reserve([bucket], 2_000, max_wait_s=0, now_ms=T0_MS)

    limiter.reconcile(reservation, 0, now_ms=T0_MS + 1_000)

    # Back to full, not to 1,000 tokens of credit: only the 200-token burst goes at once.
    assert limiter.reserve([bucket], 200, max_wait_s=0, now_ms=T0_MS + 1_000).granted
    assert not limiter.reserve([bucket], 1, max_wait_s=0, now_ms=T0_MS + 1_000).granted


def test_reconcile_charges_tokens_used_beyond_the_estimate(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    tenant = tenant_bucket("acme", rpm=None, tpm=60_000)
    reservation = limiter.reserve([provider, tenant], 100, max_wait_s=0, now_ms=T0_MS)

    limiter.reconcile(reservation, 600, now_ms=T0_MS)

    for bucket in (provider, tenant):
        follow_up = limiter.reserve([bucket], 100, max_wait_s=1, now_ms=T0_MS)
        assert follow_up.wait_s == pytest.approx(0.5)


def test_reconciling_a_refused_reservation_is_an_error(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=None, tpm=60_000)
    limiter.reserve([bucket], 5_000, max_wait_s=0, now_ms=T0_MS)
    refused = limiter.reserve([bucket], 100, max_wait_s=0, now_ms=T0_MS)

    with pytest.raises(ValueError, match="granted"):
        limiter.reconcile(refused, 0)


def test_shorter_pause_never_shortens_a_longer_one(limiter: RateLimiter) -> None:
    long_deadline_s = limiter.pause("openai", 30, now_ms=T0_MS)
    short_deadline_s = limiter.pause("openai", 5, now_ms=T0_MS + 1_000)

    assert long_deadline_s == short_deadline_s == (T0_MS + 30_000) / 1000
    assert limiter.paused_until("openai", now_ms=T0_MS + 10_000) == (T0_MS + 30_000) / 1000
    assert limiter.pause("openai", 60, now_ms=T0_MS + 1_000) == (T0_MS + 61_000) / 1000


def test_a_paused_provider_refuses_reservations_until_its_deadline(limiter: RateLimiter) -> None:
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    model = model_bucket("openai", "gpt-4o-mini", rpm=None, tpm=None)
    limiter.pause("openai", 12, now_ms=T0_MS)

    during = limiter.reserve([model], 10, max_wait_s=10, now_ms=T0_MS + 2_000)
    after = limiter.reserve([provider, model], 10, max_wait_s=10, now_ms=T0_MS + 12_000)

    assert not during.granted and during.paused and during.retry_after_s == 10
    assert after.granted and after.wait_s == 0
    assert limiter.paused_until("openai", now_ms=T0_MS + 12_000) is None
    assert limiter.reserve([tenant_bucket("acme", rpm=60, tpm=None)], 0, max_wait_s=0, now_ms=T0_MS).granted


def test_a_pause_on_redis_time_expires_by_itself(
    limiter: RateLimiter, redis_client: redis.Redis, keys: Keys
) -> None:
    seconds, micros = redis_client.time()
    now_s = seconds + micros / 1_000_000

    deadline_s = limiter.pause("anthropic", 20)

    assert deadline_s == pytest.approx(now_s + 20, abs=0.5)
    assert limiter.paused_until("anthropic") == deadline_s
    assert 19_000 < redis_client.pttl(keys.provider_pause("anthropic")) <= 20_000
    assert limiter.paused_until("openai") is None


def test_shortest_pause_left_is_the_soonest_end_on_redis_clock_or_zero(limiter: RateLimiter) -> None:
    limiter.pause("anthropic", 20)
    limiter.pause("openai", 5)

    assert 4 < limiter.shortest_pause_left_s(["anthropic", "openai"]) <= 5
    assert 19 < limiter.shortest_pause_left_s(["anthropic"]) <= 20
    assert limiter.shortest_pause_left_s(["anthropic", "not-paused"]) == 0
    assert limiter.shortest_pause_left_s([]) == 0


def test_headroom_is_the_minute_budget_left_after_recent_bookings(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=60_000)
    minute_start = T0_MS - T0_MS % 60_000
    assert limiter.headroom(bucket, now_ms=minute_start) == Headroom(600, 60_000)
    for _ in range(10):
        reservation = limiter.reserve([bucket], 1_000, max_wait_s=60, now_ms=minute_start + 15_000)
        limiter.reconcile(reservation, 400, now_ms=minute_start + 15_000)

    same_minute = limiter.headroom(bucket, now_ms=minute_start + 30_000)
    half_into_next = limiter.headroom(bucket, now_ms=minute_start + 90_000)
    two_minutes_on = limiter.headroom(bucket, now_ms=minute_start + 150_000)

    assert (same_minute.rpm_available, same_minute.tpm_available) == (590, 56_000)
    assert (half_into_next.rpm_available, half_into_next.tpm_available) == (595, 58_000)
    assert (two_minutes_on.rpm_available, two_minutes_on.tpm_available) == (600, 60_000)
    assert limiter.headroom(tenant_bucket("acme", rpm=None, tpm=None)) == Headroom(None, None)


def test_interactive_request_books_behind_at_most_the_batch_horizon(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=600, tpm=60_000)
    batch_grants = 0
    while limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS).granted:
        batch_grants += 1
    assert batch_grants == 7  # 0.2 s of burst and 0.5 s of horizon at 10 requests a second

    interactive = limiter.reserve([bucket], 100, max_wait_s=10, now_ms=T0_MS)

    assert interactive.granted and interactive.wait_s == pytest.approx(0.6)
    # The batch queued behind stays refused while the interactive booking stands.
    assert not limiter.reserve([bucket], 100, max_wait_s=0.5, now_ms=T0_MS + 100).granted


def test_bucket_rates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tpm"):
        Bucket("provider:openai", rpm=600, tpm=0)


def test_reserving_on_redis_time_paces_like_the_fake_clock(limiter: RateLimiter) -> None:
    bucket = provider_bucket("openai", rpm=60, tpm=None)  # one a second, burst 0.2 s: no second one

    first = limiter.reserve([bucket], 0, max_wait_s=0)
    second = limiter.reserve([bucket], 0, max_wait_s=2)

    assert first.granted and first.wait_s == 0
    assert second.granted and 0.7 < second.wait_s <= 1.0


def test_batch_reservations_never_exceed_one_second_share_plus_burst(limiter: RateLimiter) -> None:
    """30 threads, demand far above the rate: paced within rate + burst, and the rate is used."""
    provider = provider_bucket("openai", rpm=600, tpm=60_000)
    tenants = [tenant_bucket(name, rpm=None, tpm=45_000) for name in ("acme", "globex", "initech")]
    clock = FakeClock(T0_MS, step_ms=2)
    end_ms = T0_MS + 12_000
    granted: list[tuple[float, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        rng = random.Random(threading.get_ident())
        while (now_ms := clock.tick()) < end_ms:
            tokens = rng.randint(20, 180)
            buckets = [provider, rng.choice(tenants)]
            reservation = limiter.reserve(buckets, tokens, max_wait_s=0.5, now_ms=now_ms)
            if reservation.granted:
                with lock:
                    granted.append((granted_at_ms(reservation, now_ms), tokens))

    run_threads(30, worker)

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
def test_reconciled_reservations_never_overdraw_a_refunding_provider(
    limiter: RateLimiter, overestimate: float, min_share: float | None
) -> None:
    """30 threads; each call is settled 50-400 ms after it goes out.

    The provider charges the estimate when a call arrives and refunds the unused part when it
    ends (as Anthropic does with max_tokens), in a bucket of one second's capacity. With
    estimates 20% high the rate is still used; with any estimate nothing is ever refused.
    """
    tpm = 60_000
    bucket = provider_bucket("anthropic", rpm=6_000, tpm=tpm)
    clock = FakeClock(T0_MS, step_ms=2)
    end_ms = T0_MS + 10_000
    charges: list[tuple[float, int]] = []  # (when, +estimate) as a call goes out, (when, -unused) after
    lock = threading.Lock()

    def worker() -> None:
        rng = random.Random(threading.get_ident())
        in_flight: list[tuple[float, Reservation, int]] = []
        while (now_ms := clock.tick()) < end_ms:
            for call in [call for call in in_flight if call[0] <= now_ms]:
                in_flight.remove(call)
                _, reservation, actual = call
                limiter.reconcile(reservation, actual, now_ms=now_ms)
                with lock:
                    charges.append((now_ms, actual - reservation.tokens))
            actual = rng.randint(10, 100)
            estimate = round(overestimate * actual)
            reservation = limiter.reserve([bucket], estimate, max_wait_s=0.5, now_ms=now_ms)
            if reservation.granted:
                sent_at = granted_at_ms(reservation, now_ms)
                in_flight.append((sent_at + rng.uniform(50, 400), reservation, actual))
                with lock:
                    charges.append((sent_at, reservation.tokens))

    run_threads(30, worker)

    assert provider_refusals(charges, tpm, capacity_s=1.0) == 0
    assert any(amount < 0 for _, amount in charges)
    if min_share is not None:
        net_tokens = sum(amount for at_ms, amount in charges if at_ms <= end_ms)
        assert net_tokens >= min_share * tpm / 60_000 * (end_ms - T0_MS)
