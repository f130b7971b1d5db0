"""Latency and failure draws, and their per-request header overrides."""

from __future__ import annotations

import pytest

from sim.faults import FaultInjector, RequestOverrides, overrides_from_headers
from sim.knobs import Knobs
from sim.wire import SimError


def test_a_fail_rate_of_one_always_fails_and_zero_never_does() -> None:
    faults = FaultInjector()

    always = {faults.failure(Knobs(fail_rate=1, fail_status=503), RequestOverrides()) for _ in range(200)}
    never = {faults.failure(Knobs(fail_rate=0), RequestOverrides()) for _ in range(200)}

    assert always == {503}
    assert never == {None}


def test_a_seed_repeats_the_same_failures_and_delays() -> None:
    knobs = Knobs(fail_rate=0.5, latency_ms=10, latency_jitter_ms=20)

    def draw(faults: FaultInjector) -> list[tuple[object, float]]:
        return [
            (faults.failure(knobs, RequestOverrides()), faults.delay_s(knobs, RequestOverrides()))
            for _ in range(50)
        ]

    first, second = FaultInjector(seed=3), FaultInjector(seed=3)
    draws = draw(first)

    assert draws == draw(second)
    assert {failure for failure, _ in draws} == {500, None}
    assert all(0.010 <= delay <= 0.030 for _, delay in draws)
    first.reseed(3)
    assert draw(first) == draws


def test_headers_force_a_failure_and_an_exact_latency() -> None:
    overrides = overrides_from_headers({"x-sim-fail-status": "timeout", "x-sim-latency-ms": "250"})
    faults = FaultInjector()

    assert faults.failure(Knobs(), overrides) == "timeout"
    assert faults.delay_s(Knobs(latency_ms=5, latency_jitter_ms=100), overrides) == 0.25
    assert overrides_from_headers({"x-sim-fail-status": "529"}).fail_status == 529


@pytest.mark.parametrize(
    "headers", [{"x-sim-fail-status": "200"}, {"x-sim-latency-ms": "soon"}, {"x-sim-latency-ms": "-5"}]
)
def test_malformed_override_headers_are_a_400(headers: dict[str, str]) -> None:
    with pytest.raises(SimError) as error:
        overrides_from_headers(headers)

    assert error.value.status == 400
    assert next(iter(headers)) in (error.value.message or "")
