"""What happens to a job once every target of its model has been tried: the pure decision.

Inputs are what the run learned (how long each busy target asked to wait, whether a real
failure happened, which attempt this was) and the job's deadline; the answer is to put the
job back after a delay (refunding the attempt when nothing was really tried) or to fail it.
No I/O and no clock of its own, so every branch is a unit test (tests/unit/test_retry_policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    # Base delay before a job whose every target failed runs again (doubles per attempt).
    retry_delay_s: float = 2.0


@dataclass(frozen=True)
class Requeue:
    """Back to `queued`, due in `delay_s`; `refund` gives the attempt back (it only waited)."""

    delay_s: float
    refund: bool


@dataclass(frozen=True)
class GiveUp:
    """Fail the job: `deadline` when the wait would outlast the job's deadline, else the last
    failure stands."""

    deadline: bool


def after_all_targets(
    policy: RetryPolicy,
    *,
    busy_for_s: list[float],
    failed: bool,
    attempt: int,
    max_attempts: int,
    deadline_left_s: float | None,
    jitter: float,
    in_line: bool = False,
) -> Requeue | GiveUp:
    """The decision for a job none of whose targets answered.

    - Every target was only busy (breaker open, budget booked, provider paused): wait for the
      first to free up, jittered later by at most a quarter of the wait and half a second, so
      jobs refused together do not all come back at once; the attempt is refunded. Unless the
      job's deadline comes first. When that first wait is the job's place in the limiter's
      waiting line (`in_line`), it comes back at its place exactly: the places are spread
      already, one call's cost apart, and a pacing limiter never gets idle time back.
    - A target failed: retry with exponential backoff (capped by the shortest busy wait)
      while attempts remain, else give up.
    `jitter` is a draw from [0, 1).
    """
    if busy_for_s and not failed:
        wait_s = min(busy_for_s)
        # A place in the limiter's waiting line is already spread from the others' places:
        # jitter would only leave the budget idle until the job came back.
        delay_s = wait_s if in_line else wait_s + min(0.25 * wait_s, 0.5) * jitter
        if deadline_left_s is not None and deadline_left_s < delay_s:
            return GiveUp(deadline=True)
        return Requeue(delay_s, refund=True)
    if attempt < max_attempts:
        delay_s = policy.retry_delay_s * 2 ** (attempt - 1)
        if busy_for_s:
            delay_s = min(delay_s, min(busy_for_s))
        return Requeue(delay_s, refund=False)
    return GiveUp(deadline=False)
