"""Per-second token buckets, driven by a fake clock."""

from __future__ import annotations

import pytest

from sim.limits import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_bucket_holds_one_seconds_share_of_the_per_minute_limit(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)

    admitted = [limiter.admit("k", "m", rpm=600, tpm=None, cost_tokens=1).admitted for _ in range(12)]

    assert admitted == [True] * 10 + [False] * 2


def test_the_bucket_refills_continuously(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)
    for _ in range(10):
        limiter.admit("k", "m", rpm=600, tpm=None, cost_tokens=1)

    refused = limiter.admit("k", "m", rpm=600, tpm=None, cost_tokens=1)
    clock.now += 0.1
    admitted = limiter.admit("k", "m", rpm=600, tpm=None, cost_tokens=1)

    assert not refused.admitted and refused.limited_by == "requests"
    assert refused.retry_after_s == pytest.approx(0.1)
    assert admitted.admitted


def test_a_refused_request_charges_neither_bucket(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)
    limiter.admit("k", "m", rpm=600, tpm=6000, cost_tokens=90)

    refused = limiter.admit("k", "m", rpm=600, tpm=6000, cost_tokens=50)

    assert refused.limited_by == "tokens" and refused.requested == 50
    assert refused.requests is not None and refused.requests.remaining_per_minute == 9 * 60
    assert refused.retry_after_s == pytest.approx(0.4)


def test_a_cost_above_one_seconds_share_runs_a_full_bucket_into_debt(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)

    first = limiter.admit("k", "m", rpm=None, tpm=600, cost_tokens=25)  # bucket of 10 tokens
    second = limiter.admit("k", "m", rpm=None, tpm=600, cost_tokens=25)
    clock.now += 2.4
    still_in_debt = limiter.admit("k", "m", rpm=None, tpm=600, cost_tokens=25)
    clock.now += 1.1
    paid_back = limiter.admit("k", "m", rpm=None, tpm=600, cost_tokens=25)

    assert first.admitted and first.tokens is not None and first.tokens.remaining_per_minute == 0
    assert not second.admitted and second.retry_after_s == pytest.approx(2.5)
    assert not still_in_debt.admitted
    assert paid_back.admitted


def test_limits_below_one_per_second_still_admit_at_their_average_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)

    first = limiter.admit("k", "m", rpm=30, tpm=None, cost_tokens=1)
    clock.now += 1.9
    early = limiter.admit("k", "m", rpm=30, tpm=None, cost_tokens=1)
    clock.now += 0.1
    on_time = limiter.admit("k", "m", rpm=30, tpm=None, cost_tokens=1)

    assert (first.admitted, early.admitted, on_time.admitted) == (True, False, True)


def test_buckets_are_kept_per_key_and_model(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)
    limiter.admit("k1", "m", rpm=60, tpm=None, cost_tokens=1)

    assert not limiter.admit("k1", "m", rpm=60, tpm=None, cost_tokens=1).admitted
    assert limiter.admit("k2", "m", rpm=60, tpm=None, cost_tokens=1).admitted
    assert limiter.admit("k1", "other", rpm=60, tpm=None, cost_tokens=1).admitted


def test_a_changed_limit_and_a_reset_start_full_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter(clock)
    limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1)

    assert limiter.admit("k", "m", rpm=120, tpm=None, cost_tokens=1).admitted
    limiter.admit("k", "m", rpm=120, tpm=None, cost_tokens=1)
    limiter.reset()
    assert limiter.admit("k", "m", rpm=120, tpm=None, cost_tokens=1).admitted


def test_unlimited_models_are_always_admitted_without_state(clock: FakeClock) -> None:
    verdict = RateLimiter(clock).admit("k", "m", rpm=None, tpm=None, cost_tokens=10**9)

    assert verdict.admitted and verdict.requests is None and verdict.tokens is None


def test_bucket_state_is_reported_in_per_minute_terms(clock: FakeClock) -> None:
    bucket = TokenBucket(per_minute=120, now=clock.now)
    bucket.take(1)

    state = bucket.state()

    assert state.limit_per_minute == 120
    assert state.remaining_per_minute == 60
    assert state.reset_s == pytest.approx(0.5)
