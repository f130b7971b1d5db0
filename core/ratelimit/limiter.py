"""The fleet-wide rate limiter: every worker books upstream budget in Redis before it calls.

A call must fit into several budgets at once (a provider, optionally a provider+model, a
tenant), each with a requests-per-minute and a tokens-per-minute rate. Providers enforce those
rates over about a second, not a minute (DESIGN.md, "Rate limits as providers enforce them"),
so each budget is a GCRA limiter that paces calls evenly with a burst of at most `burst_s`
of its rate; by default none (one call at a time): a provider that enforces its quota per
trailing second with a small tolerance sees a burst plus arrival jitter as an overrun (600
RPM from 3 workers with a 0.2 s burst drew 429s in the first seconds of a batch).
`RateLimiter.reserve` books 1 request plus an estimate of the tokens in all buckets in one
atomic script call, or books nothing; the caller sleeps the short wait it is given, or puts
the job back with `retry_after_s` when the wait would be longer than it
accepts. After the call, `reconcile` replaces the estimate with what the provider counted:
unused budget returns at once, as far as a provider's own bucket can have regained it. A
provider's 429 / Retry-After pauses it fleet-wide (`pause`), and `reserve` refuses
every bucket of a paused provider until the deadline; a pause set while a granted caller
sleeps its wait is caught by `longest_pause_left_s` just before the call. Each operation is
one script: `common.lua` beside this module (the state, documented in its header) followed by
the operation's own file (`reserve.lua`, `reconcile.lua`, `headroom.lua`, `pause.lua`, each
documenting its keys and arguments). Every method is a coroutine on a `redis.asyncio` client:
callers run on one event loop per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from core.redis.keys import Keys
from core.redis.scripts import FleetScript, ScriptCall, run_call

OPERATIONS = ("reserve", "reconcile", "headroom", "pause")


def script_source(operation: str) -> str:
    """One operation's script: `common.lua` (the state and shared helpers), then its own file."""
    here = Path(__file__).parent
    common = (here / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (here / f"{operation}.lua").read_text(encoding="utf-8")


SCRIPTS = {operation: FleetScript(script_source(operation)) for operation in OPERATIONS}
_US_PER_MINUTE = 60_000_000


@dataclass(frozen=True)
class Bucket:
    """One budget a call must fit into; `rpm` / `tpm` of None means no limit on that dimension.

    `provider` names the provider whose fleet-wide pause also stops this bucket; it is set on
    provider and provider+model buckets and None on tenant buckets. Build buckets with
    `provider_bucket`, `model_bucket` and `tenant_bucket` so their names stay consistent.
    """

    name: str
    rpm: int | None
    tpm: int | None
    provider: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a bucket needs a name")
        for field, rate in (("rpm", self.rpm), ("tpm", self.tpm)):
            if rate is not None and rate <= 0:
                raise ValueError(f"bucket {self.name!r}: {field} must be positive or None, not {rate}")


def provider_bucket(provider: str, *, rpm: int | None, tpm: int | None) -> Bucket:
    """The budget of a whole provider account (config `providers.<name>.rpm/tpm`)."""
    return Bucket(f"provider:{provider}", rpm, tpm, provider=provider)


def model_bucket(provider: str, model: str, *, rpm: int | None, tpm: int | None) -> Bucket:
    """A per-model budget inside a provider, where the provider limits models separately; its
    pause is the model's own (`provider/model`), so one model's 429 leaves the others running."""
    return Bucket(f"model:{provider}/{model}", rpm, tpm, provider=f"{provider}/{model}")


def tenant_bucket(tenant: str, *, rpm: int | None, tpm: int | None) -> Bucket:
    """A tenant's own budget across all providers (config `tenants.<name>`, else `default`)."""
    return Bucket(f"tenant:{tenant}", rpm, tpm)


@dataclass(frozen=True)
class Place:
    """Who a refused caller waits in line for: a tenant and its weight in fair shares. With a
    place, each tenant waiting on a bucket has a line of its own there, advanced by a call's
    cost times (the waiting tenants' total weight / its own): a bucket's rate is shared by
    weight between the tenants waiting on it, and a tenant alone gets all of it."""

    owner: str
    weight: float = 1.0


@dataclass(frozen=True)
class Reservation:
    """The answer of `reserve`.

    Granted: the budget is booked; call the provider after sleeping `wait_s` (unless
    `RateLimiter.longest_pause_left_s` finds one of its providers paused by then), then
    `reconcile`.
    Not granted: nothing is booked; try again in `retry_after_s` (the time the request would
    conform if nobody else booked meanwhile, or the caller's turn in the waiting line, or the
    end of a provider pause when `paused`).
    """

    granted: bool
    tokens: int
    buckets: tuple[Bucket, ...]
    wait_s: float = 0.0
    retry_after_s: float | None = None
    paused: bool = False


@dataclass(frozen=True)
class Headroom:
    """What is left of a bucket's per-minute budget, as `GET /v1/providers` shows it.

    `rpm_available` = rpm minus the requests booked over the last 60 s, never below 0 (and
    likewise `tpm_available` in tokens, after reconciliation); None where the bucket has no such
    limit. The last 60 s are estimated from calendar-minute counters: the current minute plus
    the previous minute weighted by the part of it still inside the 60 s. It is a utilisation
    gauge (0 = saturated), not a promise: calls are paced, so the budget is never available as
    one burst.
    """

    rpm_available: int | None
    tpm_available: int | None


class RateLimiter:
    """Books upstream budget for the whole fleet.

    Priority comes from how long a caller accepts to wait: batch jobs pass a small `max_wait_s`
    (0.5 s), interactive jobs a larger one (a few seconds, e.g. 5 to 10 s). Batch callers
    therefore never book far ahead: under saturation the bookings reach at most about 0.5 s past
    now, and an interactive request books right behind them instead of behind the whole batch,
    while the batch, which books whenever the 0.5 s horizon has room, still uses the full rate
    when it is alone.

    `now_ms` arguments replace Redis TIME; they exist for tests only.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, *, burst_s: float = 0.0) -> None:
        if burst_s < 0:
            raise ValueError(f"burst_s must be >= 0, not {burst_s}")
        self.client = client
        self._keys = keys
        self._burst_us = round(burst_s * 1_000_000)

    async def reserve(
        self,
        buckets: Sequence[Bucket],
        tokens: int,
        *,
        max_wait_s: float,
        line: bool = False,
        place: Place | None = None,
        now_ms: int | None = None,
    ) -> Reservation:
        """Book 1 request and `tokens` tokens in every bucket if that conforms within `max_wait_s`.

        A cost above a bucket's burst is granted once that bucket is full and leaves it in debt
        (later calls wait it out), so a big request is delayed, never refused forever. Every
        bucket is booked at the time the slowest one allows, when the call really goes out.

        With `line`, a refused caller takes the next place in the buckets' waiting line: its
        `retry_after_s` is when its turn comes if everyone ahead comes back at theirs, one
        request's cost after the caller before it. A batch of 50,000 refused at once thus
        returns spread at the budget's rate, about once each, instead of all at the moment the
        budget frees, when all but a few would be refused (and requeued) again. Nothing is
        booked: a caller that never returns leaves a gap that new callers fill.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, not {tokens}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, not {max_wait_s}")
        names = [b.name for b in buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"a bucket appears twice in {names}")
        call = self.reserve_call(
            buckets, tokens, max_wait_s=max_wait_s, line=line, place=place, now_ms=now_ms
        )
        if call is None:
            return Reservation(True, tokens, tuple(buckets))
        return reservation_from(await run_call(self.client, call), tokens, buckets)

    def reserve_call(
        self,
        buckets: Sequence[Bucket],
        tokens: int,
        *,
        max_wait_s: float,
        line: bool = False,
        place: Place | None = None,
        now_ms: int | None = None,
    ) -> ScriptCall | None:
        """The script call of `reserve` (to run alone or in the gate), or None when no bucket
        is limited and no provider can be paused: then the reservation is granted as it is."""
        limited = [b for b in buckets if b.rpm is not None or b.tpm is not None]
        providers = sorted({b.provider for b in buckets if b.provider is not None})
        if not limited and not providers:
            return None
        args: list[str | int] = [
            "reserve",
            _now_arg(now_ms),
            len(limited),
            tokens,
            round(max_wait_s * 1_000_000),
            self._burst_us,
        ]
        for bucket in limited:
            args += [_interval_us(bucket.rpm), _interval_us(bucket.tpm)]
        args.append("1" if line else "0")
        args += [place.owner, repr(float(place.weight))] if place is not None else ["", "1"]
        keys = [self._keys.rate_limit(b.name) for b in limited]
        keys += [self._keys.rate_limit_ahead(b.name) for b in limited]
        keys += [self._keys.provider_pause(p) for p in providers]
        return SCRIPTS["reserve"].call(keys, args)

    async def reconcile(
        self, reservation: Reservation, actual_tokens: int, *, now_ms: int | None = None
    ) -> None:
        """Replace the reservation's token estimate with what the provider counted for the call.

        `actual_tokens` is what the provider charges against its token limit, which is not
        always the usage it reports: OpenAI and jobgate's sim charge prompt + `max_tokens` when
        the request sets it, however short the answer (prompt + completion without it);
        Anthropic charges `max_tokens` up front and refunds the unused part at the end.

        A surplus is charged at once. Unused tokens return to every token bucket at once, as far
        as they repay the debt of calls already sent and never past full: that is all the
        provider's own bucket can have regained, and crediting more would let new calls pile
        onto the bookings still waiting to go out. Estimates far above the charge therefore cost
        throughput; sending `max_tokens` upstream lets the estimate match it. Call this once
        per granted reservation; pass 0 for a call that never reached the provider.
        """
        call = self.reconcile_call(reservation, actual_tokens, now_ms=now_ms)
        if call is not None:
            await run_call(self.client, call)

    def reconcile_call(
        self, reservation: Reservation, actual_tokens: int, *, now_ms: int | None = None
    ) -> ScriptCall | None:
        """The script call of `reconcile` (to run alone or in a pipeline); None when there is
        nothing to change."""
        if not reservation.granted:
            raise ValueError("only a granted reservation can be reconciled")
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, not {actual_tokens}")
        delta = actual_tokens - reservation.tokens
        token_buckets = [b for b in reservation.buckets if b.tpm is not None]
        if delta == 0 or not token_buckets:
            return None
        args: list[str | int] = ["reconcile", _now_arg(now_ms), delta]
        args += [_interval_us(b.tpm) for b in token_buckets]
        keys = [self._keys.rate_limit(b.name) for b in token_buckets]
        keys += [self._keys.rate_limit_ahead(b.name) for b in token_buckets]
        return SCRIPTS["reconcile"].call(keys, args)

    async def headroom(self, bucket: Bucket, *, now_ms: int | None = None) -> Headroom:
        """The bucket's unused per-minute budget; see `Headroom` for the exact meaning."""
        if bucket.rpm is None and bucket.tpm is None:
            return Headroom(None, None)
        used_requests, used_tokens = await run_call(
            self.client,
            SCRIPTS["headroom"].call([self._keys.rate_limit(bucket.name)], ["headroom", _now_arg(now_ms)]),
        )
        return Headroom(
            rpm_available=None if bucket.rpm is None else max(bucket.rpm - used_requests, 0),
            tpm_available=None if bucket.tpm is None else max(bucket.tpm - used_tokens, 0),
        )

    async def pause(self, provider: str, for_s: float, *, now_ms: int | None = None) -> float:
        """Stop every call to `provider` fleet-wide for `for_s` seconds from now.

        A pause already set with a later deadline stays as it is: the later deadline wins.
        Returns the deadline in force, as a unix time in seconds (Redis clock).
        """
        if for_s < 0:
            raise ValueError(f"for_s must be >= 0, not {for_s}")
        deadline_ms = await run_call(
            self.client,
            SCRIPTS["pause"].call(
                [self._keys.provider_pause(provider)], ["pause", _now_arg(now_ms), round(for_s * 1000)]
            ),
        )
        return int(deadline_ms) / 1000

    async def paused_until(self, provider: str, *, now_ms: int | None = None) -> float | None:
        """The end of the provider's pause as a unix time in seconds, or None if not paused."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.get(self._keys.provider_pause(provider))
            (seconds, micros), raw_deadline = await pipe.execute()
        if raw_deadline is None:
            return None
        current_ms = now_ms if now_ms is not None else seconds * 1000 + micros // 1000
        deadline_ms = int(raw_deadline)
        return deadline_ms / 1000 if deadline_ms > current_ms else None

    async def shortest_pause_left_s(self, providers: Iterable[str]) -> float:
        """Seconds until the first of `providers` may be called again: 0 if one is not paused.
        Read in one round trip, against Redis's clock (the one pauses are set by)."""
        return min(await self._pauses_left_ms(providers), default=0) / 1000

    async def longest_pause_left_s(self, providers: Iterable[str]) -> float:
        """Seconds until every one of `providers` may be called again: 0 if none is paused.

        A granted reservation is booked before its wait; a provider's 429 during that wait pauses
        the provider without undoing the booking. A caller that slept its wait asks this about
        its reservation's providers before it calls, and does not call while one is paused.
        Read in one round trip, against Redis's clock (the one pauses are set by)."""
        return max(await self._pauses_left_ms(providers), default=0) / 1000

    async def _pauses_left_ms(self, providers: Iterable[str]) -> list[int]:
        """Each provider's pause left in milliseconds on Redis's clock, 0 where not paused."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.time()
            for name in providers:
                pipe.get(self._keys.provider_pause(name))
            (seconds, micros), *deadlines = await pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        return [max(int(raw) - now_ms, 0) if raw is not None else 0 for raw in deadlines]


def _now_arg(now_ms: int | None) -> str:
    return "" if now_ms is None else str(int(now_ms))


def _interval_us(per_minute: int | None) -> str:
    """Microseconds between two units at `per_minute`; "" when there is no limit."""
    return "" if per_minute is None else repr(_US_PER_MINUTE / per_minute)


def reservation_from(reply: list[Any], tokens: int, buckets: Sequence[Bucket]) -> Reservation:
    """The `Reservation` in the script's reply to "reserve"."""
    granted, wait_us, retry_after_us, paused = reply
    if granted:
        return Reservation(True, tokens, tuple(buckets), wait_s=wait_us / 1_000_000)
    return Reservation(
        False, tokens, tuple(buckets), retry_after_s=retry_after_us / 1_000_000, paused=bool(paused)
    )
