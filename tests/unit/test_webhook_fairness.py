"""The per-tenant shares of a worker process's webhook senders (core/webhooks/fairness.py)."""

from __future__ import annotations

import pytest

from core.webhooks.fairness import FIRST_ESTIMATE_S, MAX_WAIT_S, AttemptSlots, TenantShares


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_tenant_at_its_cap_is_refused_while_other_tenants_still_get_slots(clock: FakeClock) -> None:
    slots = AttemptSlots(2, clock=clock)

    mine = [slots.take("a"), slots.take("a")]
    refused = slots.take("a")
    theirs = slots.take("b")

    assert None not in mine
    assert refused is None
    assert theirs is not None


def test_a_slot_given_back_is_free_again(clock: FakeClock) -> None:
    slots = AttemptSlots(1, clock=clock)
    token = slots.take("a")
    assert token is not None

    slots.give_back("a", token, took_s=0.1)

    assert slots.take("a") is not None


def test_waiting_turns_follow_one_another_by_the_first_estimate_over_the_cap(clock: FakeClock) -> None:
    slots = AttemptSlots(2, clock=clock)
    slots.take("a")
    slots.take("a")

    turns = [slots.take_turn("a") for _ in range(3)]

    assert turns == pytest.approx([FIRST_ESTIMATE_S / 2, FIRST_ESTIMATE_S, 1.5 * FIRST_ESTIMATE_S])


def test_waiting_turns_are_spaced_by_the_tenants_measured_attempt_duration_over_its_cap(
    clock: FakeClock,
) -> None:
    slots = AttemptSlots(2, clock=clock)
    held = [slots.take("a"), slots.take("a"), slots.take("a")]
    assert held[2] is None
    assert held[0] is not None
    slots.give_back("a", held[0], took_s=4.0)
    assert slots.take("a") is not None

    assert slots.take_turn("a") == pytest.approx(2.0)
    assert slots.take_turn("a") == pytest.approx(4.0)


def test_a_line_behind_attempts_that_have_started_hanging_slows_down_before_any_ends(
    clock: FakeClock,
) -> None:
    slots = AttemptSlots(2, clock=clock)
    slots.take("a")
    slots.take("a")
    clock.now_s += 10.0  # both still in flight

    assert slots.take_turn("a") == pytest.approx(5.0)


def test_no_turn_is_further_than_the_longest_wait(clock: FakeClock) -> None:
    slots = AttemptSlots(1, clock=clock)
    slots.take("a")
    clock.now_s += MAX_WAIT_S  # an attempt in flight for that long spaces turns by as much

    turns = [slots.take_turn("a") for _ in range(3)]

    assert turns == pytest.approx([MAX_WAIT_S] * 3)


def test_a_tenant_whose_attempts_ended_gets_a_short_turn(clock: FakeClock) -> None:
    slots = AttemptSlots(2, clock=clock)

    assert slots.take_turn("a") == pytest.approx(FIRST_ESTIMATE_S / 2)


def test_a_shared_pool_gives_one_tenant_its_share_and_the_rest_to_others() -> None:
    shares = TenantShares(total=4, per_tenant=2)

    mine = [shares.try_take("a") for _ in range(3)]
    theirs = [shares.try_take("b"), shares.try_take("c")]
    full = shares.try_take("d")
    shares.give_back("a")

    assert mine == [True, True, False]
    assert theirs == [True, True]
    assert full is False
    assert shares.held("a") == 1
    assert shares.try_take("d") is True


def test_sends_outside_any_tenant_are_bounded_by_the_pool_only() -> None:
    shares = TenantShares(total=3, per_tenant=1)

    assert [shares.try_take(None) for _ in range(4)] == [True, True, True, False]
