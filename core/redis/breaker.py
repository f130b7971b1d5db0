"""The fleet-wide circuit breaker: one view, shared by every worker, of whether a target works.

A target is one provider model ("openai/gpt-4o-mini"). Its breaker opens when `failures`
calls fail within `window_s` (config `providers.<name>.breaker`, default 5 in 60 s), refuses
calls for `cooldown_s`, then lets exactly one call in the whole fleet through as a probe: the
probe's success closes the breaker, its failure opens it for another cool-down. If the probe's
holder dies without reporting, the next caller after the probe timeout becomes the probe.
Which outcomes count as failures is the caller's decision (a provider's 5xx, overload or
timeout, not a client's bad request). Every transition is one call of `breaker.lua` beside
this module, on Redis TIME, so all workers see the same state. Every method is a coroutine on
a `redis.asyncio` client: callers run on one event loop per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from core.config import BreakerConfig
from core.redis.keys import Keys
from core.redis.scripts import FleetScript, ScriptCall, run_call

SOURCE = Path(__file__).with_name("breaker.lua").read_text(encoding="utf-8")
SCRIPT = FleetScript(SOURCE)

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Permit:
    """The answer of `CircuitBreaker.allow`.

    `probe` is True for the one caller that tests a half-open target; it must report its
    outcome with `probe=True`. When not allowed, `retry_after_s` is the end of the cool-down,
    or, while a probe is out, the latest time its outcome can be known.
    """

    allowed: bool
    probe: bool
    state: BreakerState
    retry_after_s: float | None


@dataclass(frozen=True)
class BreakerStats:
    """A breaker's state and the outcomes reported over about the last 60 s.

    The 60 s are estimated from calendar-minute counters (the current minute plus the previous
    one weighted by the part of it still inside the 60 s), whatever the breaker's `window_s`.
    """

    state: BreakerState
    recent_successes: int
    recent_failures: int

    @property
    def error_rate(self) -> float | None:
        """Failures / outcomes over the last 60 s; None when nothing was reported."""
        total = self.recent_successes + self.recent_failures
        return self.recent_failures / total if total else None


@dataclass(frozen=True)
class _Outcome:
    state: BreakerState
    allowed: bool
    probe: bool
    retry_after_s: float
    recent_successes: int
    recent_failures: int


class CircuitBreaker:
    """Circuit breakers per target, shared by the fleet through Redis.

    `probe_timeout_s` (per `allow` call, default the breaker's `cooldown_s`) is how long a probe
    may take before another caller may probe instead; pass at least the provider's call timeout
    (config `timeout_s`), so a slow probe is not doubled. `now_ms` arguments replace Redis TIME;
    they exist for tests only.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self._keys = keys

    async def allow(
        self,
        target: str,
        config: BreakerConfig,
        *,
        probe_timeout_s: float | None = None,
        now_ms: int | None = None,
    ) -> Permit:
        """May this caller call `target` now? At most one caller fleet-wide gets the probe."""
        call = self.call("allow", target, config, probe_timeout_s=probe_timeout_s, now_ms=now_ms)
        return permit_from(await run_call(self.client, call))

    async def record_success(
        self, target: str, config: BreakerConfig, *, probe: bool, now_ms: int | None = None
    ) -> BreakerState:
        """Report a call that worked; the probe's success closes the breaker. Returns the state."""
        return (await self._apply(self.call("success", target, config, probe=probe, now_ms=now_ms))).state

    async def record_failure(
        self, target: str, config: BreakerConfig, *, probe: bool, now_ms: int | None = None
    ) -> BreakerState:
        """Report a failed call; the N-th within the window, or the probe's, opens the breaker.

        A failure reported while the breaker is open or half-open (a call that started before
        it opened) is only counted in the stats: it does not stretch the cool-down. Returns the
        state after the report.
        """
        return (await self._apply(self.call("failure", target, config, probe=probe, now_ms=now_ms))).state

    async def release_probe(self, target: str, *, now_ms: int | None = None) -> BreakerState:
        """Give the probe up without calling (say, no rate budget for it): the next caller probes.

        Only the probe's holder calls this; without it, the probe passes on after its timeout.
        """
        return (await self._apply(self.call("release", target, BreakerConfig(), now_ms=now_ms))).state

    async def state(self, target: str, *, now_ms: int | None = None) -> BreakerState:
        """The state callers see: "half_open" as soon as the cool-down is over, before any probe."""
        return (await self.stats(target, now_ms=now_ms)).state

    async def stats(self, target: str, *, now_ms: int | None = None) -> BreakerStats:
        """State and recent outcome counts, for `GET /v1/providers` and the metrics."""
        outcome = await self._apply(self.call("stats", target, BreakerConfig(), now_ms=now_ms))
        return BreakerStats(outcome.state, outcome.recent_successes, outcome.recent_failures)

    async def _apply(self, call: ScriptCall) -> _Outcome:
        return _outcome(await run_call(self.client, call))

    def call(
        self,
        event: str,
        target: str,
        config: BreakerConfig,
        *,
        probe: bool = False,
        probe_timeout_s: float | None = None,
        now_ms: int | None = None,
    ) -> ScriptCall:
        """The script call that applies `event`, to run alone, in a pipeline or in the gate."""
        timeout_s = config.cooldown_s if probe_timeout_s is None else probe_timeout_s
        return SCRIPT.call(
            [self._keys.breaker(target), self._keys.breaker_failures(target)],
            [
                event,
                "" if now_ms is None else str(int(now_ms)),
                config.failures,
                _ms(config.window_s),
                _ms(config.cooldown_s),
                _ms(timeout_s),
                "1" if probe else "0",
            ],
        )


def _outcome(reply: list[Any]) -> _Outcome:
    raw_state, allowed, is_probe, retry_after_ms, successes, failures = reply
    state = raw_state.decode() if isinstance(raw_state, bytes) else raw_state
    return _Outcome(
        state=cast(BreakerState, state),
        allowed=bool(allowed),
        probe=bool(is_probe),
        retry_after_s=retry_after_ms / 1000,
        recent_successes=int(successes),
        recent_failures=int(failures),
    )


def permit_from(reply: list[Any]) -> Permit:
    """The `Permit` in the script's reply to "allow"."""
    outcome = _outcome(reply)
    return Permit(
        allowed=outcome.allowed,
        probe=outcome.probe,
        state=outcome.state,
        retry_after_s=None if outcome.allowed else outcome.retry_after_s,
    )


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (Redis rejects a zero expiry)."""
    return max(round(seconds * 1000), 1)
