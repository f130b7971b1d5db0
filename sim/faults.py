"""Latency and failure injection: how long a request waits and whether it fails, and how.

Each request waits `latency_ms` plus a uniform random `0..latency_jitter_ms`, then fails with
`fail_status` with probability `fail_rate` (1.0 always fails, 0 never). A request may override
both with headers: `x-sim-latency-ms: N` (exactly N, no jitter) and `x-sim-fail-status: S` (fail
with S for certain; S is 400..599 or "timeout"). Randomness comes from one generator seeded by
the `seed` knob, so a seeded run repeats its sequence of failures and delays.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from sim.knobs import KnobError, Knobs, parse_fail_status
from sim.wire import SimError

LATENCY_HEADER = "x-sim-latency-ms"
FAIL_STATUS_HEADER = "x-sim-fail-status"


@dataclass(frozen=True)
class RequestOverrides:
    latency_ms: float | None = None
    fail_status: int | str | None = None


NO_OVERRIDES = RequestOverrides()


def overrides_from_headers(headers: Mapping[str, str]) -> RequestOverrides:
    """The per-request overrides; raises SimError(400) naming a malformed header."""
    latency_raw = headers.get(LATENCY_HEADER)
    status_raw = headers.get(FAIL_STATUS_HEADER)
    if latency_raw is None and status_raw is None:
        return NO_OVERRIDES
    latency_ms: float | None = None
    if latency_raw is not None:
        try:
            latency_ms = float(latency_raw)
        except ValueError:
            latency_ms = -1.0
        if not latency_ms >= 0:
            raise SimError(400, f"{LATENCY_HEADER} must be a number of milliseconds, got {latency_raw!r}")
    fail_status: int | str | None = None
    if status_raw is not None:
        try:
            fail_status = parse_fail_status(status_raw.strip(), FAIL_STATUS_HEADER)
        except KnobError as exc:
            raise SimError(400, str(exc)) from exc
    return RequestOverrides(latency_ms, fail_status)


class FaultInjector:
    """Draws delays and failures from one seedable random generator."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def reseed(self, seed: int | None) -> None:
        self._rng.seed(seed)

    def delay_s(self, knobs: Knobs, overrides: RequestOverrides) -> float:
        if overrides.latency_ms is not None:
            return overrides.latency_ms / 1000
        latency_ms = knobs.latency_ms
        if knobs.latency_jitter_ms:
            latency_ms += self._rng.uniform(0, knobs.latency_jitter_ms)
        return latency_ms / 1000

    def failure(self, knobs: Knobs, overrides: RequestOverrides) -> int | str | None:
        """The status to fail with ("timeout" to hang up), or None to answer normally."""
        if overrides.fail_status is not None:
            return overrides.fail_status
        if knobs.fail_rate and self._rng.random() < knobs.fail_rate:
            return knobs.fail_status
        return None
