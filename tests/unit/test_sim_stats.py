"""The sim's record of requests in flight: the gauge, its peak, and its integral over time."""

from __future__ import annotations

from sim.stats import Stats


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_in_flight_seconds_integrate_the_gauge_over_time() -> None:
    clock = FakeMonotonic()
    stats = Stats(clock=lambda: 0.0, monotonic=clock)

    stats.request_arrived()  # one in flight for 2 s
    clock.now += 2
    stats.request_arrived()  # two in flight for 1 s
    clock.now += 1
    stats.request_left()  # one in flight for 3 s
    clock.now += 3
    stats.request_left()
    clock.now += 10  # none in flight adds nothing

    snapshot = stats.snapshot()
    assert snapshot["in_flight_s"] == 2 * 1 + 1 * 2 + 3 * 1
    assert snapshot["max_in_flight"] == 2
    assert snapshot["in_flight"] == 0


def test_a_snapshot_counts_requests_still_in_flight_up_to_its_own_moment() -> None:
    clock = FakeMonotonic()
    stats = Stats(clock=lambda: 0.0, monotonic=clock)
    for _ in range(4):
        stats.request_arrived()

    clock.now += 0.5
    assert stats.snapshot()["in_flight_s"] == 2.0
    clock.now += 0.5
    assert stats.snapshot()["in_flight_s"] == 4.0


def test_reset_zeroes_the_integral_but_keeps_counting_requests_still_in_flight() -> None:
    clock = FakeMonotonic()
    stats = Stats(clock=lambda: 0.0, monotonic=clock)
    stats.request_arrived()
    clock.now += 5

    stats.reset()
    clock.now += 1.5

    assert stats.snapshot()["in_flight_s"] == 1.5
