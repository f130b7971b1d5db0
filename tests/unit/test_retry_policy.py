"""The decision after every target of a job's model was tried (core/services/retry_policy.py)."""

from __future__ import annotations

import time

from core.errors import ServerError
from core.services.execute import OutcomeStatus, Verdict
from core.services.retry_policy import GiveUp, Requeue, RetryPolicy, after_all_targets
from core.services.upstream import MAX_INLINE_RETRY_WAIT_S, retry_wait_s

POLICY = RetryPolicy(retry_delay_s=2.0)


def decide(**overrides: object) -> Requeue | GiveUp:
    arguments: dict[str, object] = {
        "busy_for_s": [],
        "failed": True,
        "attempt": 1,
        "max_attempts": 3,
        "deadline_left_s": None,
        "jitter": 0.0,
    }
    arguments.update(overrides)
    return after_all_targets(POLICY, **arguments)  # type: ignore[arg-type]


def test_a_job_whose_targets_were_only_busy_waits_for_the_first_and_keeps_its_attempt() -> None:
    assert decide(busy_for_s=[8.0, 3.0], failed=False) == Requeue(3.0, refund=True)


def test_busy_waits_are_jittered_later_by_at_most_a_quarter_and_half_a_second() -> None:
    assert decide(busy_for_s=[1.0], failed=False, jitter=0.999) == Requeue(1.0 + 0.25 * 0.999, refund=True)
    assert decide(busy_for_s=[30.0], failed=False, jitter=1.0) == Requeue(30.5, refund=True)


def test_a_place_in_the_limiters_line_is_come_back_to_exactly_not_jittered() -> None:
    """Places are spread one call's cost apart already; jitter would leave the budget idle."""
    assert decide(busy_for_s=[30.0], failed=False, jitter=1.0, in_line=True) == Requeue(30.0, refund=True)


def test_a_busy_wait_past_the_deadline_fails_the_job_as_deadline_exceeded() -> None:
    assert decide(busy_for_s=[10.0], failed=False, deadline_left_s=5.0) == GiveUp(deadline=True)


def test_a_failed_attempt_backs_off_exponentially_and_spends_the_attempt() -> None:
    assert decide(attempt=1) == Requeue(2.0, refund=False)
    assert decide(attempt=2) == Requeue(4.0, refund=False)


def test_a_busy_target_beside_a_failure_shortens_the_backoff_to_its_wait() -> None:
    assert decide(attempt=2, busy_for_s=[1.5]) == Requeue(1.5, refund=False)


def test_the_last_attempt_failing_gives_up_with_the_failure() -> None:
    assert decide(attempt=3) == GiveUp(deadline=False)


# --- the wait before a second try at the same target (core/services/upstream.py) ---------------


def test_a_short_retry_after_is_waited_as_asked_and_a_long_one_capped() -> None:
    assert retry_wait_s(ServerError("busy", retry_after_s=0.7), 1) == 0.7
    assert retry_wait_s(ServerError("busy", retry_after_s=30), 1) == MAX_INLINE_RETRY_WAIT_S


def test_without_retry_after_the_wait_backs_off_with_jitter_within_the_cap() -> None:
    first = [retry_wait_s(ServerError("boom"), 1) for _ in range(200)]
    third = [retry_wait_s(ServerError("boom"), 3) for _ in range(200)]
    assert all(0.2 <= wait <= 0.4 for wait in first)
    assert len(set(first)) > 1  # jittered
    assert all(0.8 <= wait <= 1.0 for wait in third)
    assert retry_wait_s(ServerError("boom"), 10) == MAX_INLINE_RETRY_WAIT_S


def test_a_requeue_delay_counts_from_the_decision_not_from_the_group_write() -> None:
    """A verdict that waited for its group write comes back when decided, not that much later."""
    verdict = Verdict(OutcomeStatus.REQUEUED, [], delay_s=10.0, decided_at=time.monotonic() - 4.0)
    assert 5.9 <= verdict.delay_left_s() <= 6.0
    assert abs(verdict.due_ms() - (time.time() + 6.0) * 1000) < 100
    overdue = Verdict(OutcomeStatus.REQUEUED, [], delay_s=1.0, decided_at=time.monotonic() - 4.0)
    assert overdue.delay_left_s() == 0
