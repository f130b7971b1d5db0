"""What the simulator saw: counters in total, per model and per API key, plus recent call times.

`GET /sim/stats` serves `Stats.snapshot()`; `GET /sim/calls` serves `Stats.calls()`, a bounded
ring (the last 100,000 per model) of `{"t": arrival unix time, "status": HTTP status, "end":
unix time it ended}` entries,
where status 0 means the connection was closed without an answer (the "timeout" failure). A
request counts in `requests` when it arrives, in its model and key when its body names the model,
and in exactly one outcome when it ends: `calls` (answered 200), `rate_limited` (429 for a
limit), `injected_failures` (by status, or "timeout"), or only in `responses` (rejected: 400,
401, 404). `in_flight_s` integrates the in-flight gauge over time (request-seconds since the
last reset): divided by a span it is the exact time-averaged number of requests in flight,
where the peak (`max_in_flight`) says nothing of the rest of the run. `GET /sim/requests`
serves `Stats.requests()`: the shape of the last 1,000 model requests (path, query string, which
credential headers came, the key, the model, the status), so a test can see what a client sent.
Everything runs on the event loop thread, so plain counters suffice.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

CALL_RING_SIZE = 100_000
REQUEST_LOG_SIZE = 1_000


class Outcome(Enum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    INJECTED = "injected"
    REJECTED = "rejected"


@dataclass(frozen=True)
class SeenRequest:
    """What one model request looked like on the wire (its credentials only by header name)."""

    t: float
    path: str
    query: str
    auth_headers: tuple[str, ...]
    key: str | None
    model: str | None
    status: int

    def as_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "path": self.path,
            "query": self.query,
            "auth_headers": list(self.auth_headers),
            "key": self.key,
            "model": self.model,
            "status": self.status,
        }


@dataclass
class Counters:
    requests: int = 0
    calls: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    injected_failures: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: Outcome, failure: str | None, input_tokens: int, output_tokens: int) -> None:
        if outcome is Outcome.OK:
            self.calls += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
        elif outcome is Outcome.RATE_LIMITED:
            self.rate_limited += 1
        elif outcome is Outcome.INJECTED and failure is not None:
            self.injected_failures[failure] = self.injected_failures.get(failure, 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "calls": self.calls,
            "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "injected_failures": dict(self.injected_failures),
        }


class Stats:
    """Counters and call rings; `reset()` zeroes them but keeps requests still in flight."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        ring_size: int = CALL_RING_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._ring_size = ring_size
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.total = Counters()
        self.models: dict[str, Counters] = {}
        self.keys: dict[str, Counters] = {}
        self.responses: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.first_call_at: float | None = None
        self.last_call_at: float | None = None
        self._rings: dict[str, deque[tuple[float, int, float]]] = {}
        self._seen: deque[SeenRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self._in_flight_s = 0.0
        self._gauge_changed_at = self._monotonic()

    def _integrate(self) -> None:
        now = self._monotonic()
        self._in_flight_s += self.in_flight * (now - self._gauge_changed_at)
        self._gauge_changed_at = now

    def request_arrived(self) -> float:
        """Count a new request as received and in flight; returns its arrival time."""
        self.total.requests += 1
        self._integrate()
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        return self._clock()

    def request_left(self) -> None:
        self._integrate()
        self.in_flight -= 1

    def attribute(self, model: str, key: str) -> None:
        """Count the request against its model and API key once its body has been read."""
        self._counters(self.models, model).requests += 1
        self._counters(self.keys, key).requests += 1

    def request_ended(
        self,
        *,
        arrived_at: float,
        status: int,
        outcome: Outcome,
        model: str | None = None,
        key: str | None = None,
        failure: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Record how a request ended; `failure` names an injected failure ("500", "timeout")."""
        status_name = str(status)
        self.responses[status_name] = self.responses.get(status_name, 0) + 1
        self.total.count(outcome, failure, input_tokens, output_tokens)
        if model is not None:
            self._counters(self.models, model).count(outcome, failure, input_tokens, output_tokens)
            ring = self._rings.get(model)
            if ring is None:
                ring = self._rings[model] = deque(maxlen=self._ring_size)
            ring.append((arrived_at, status, self._clock()))
        if key is not None:
            self._counters(self.keys, key).count(outcome, failure, input_tokens, output_tokens)
        if outcome is Outcome.OK:
            now = self._clock()
            if self.first_call_at is None:
                self.first_call_at = now
            self.last_call_at = now

    def request_seen(self, seen: SeenRequest) -> None:
        self._seen.append(seen)

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        """The last model requests' shapes (of one model, or all), oldest first."""
        return [seen.as_json() for seen in self._seen if model is None or seen.model == model]

    def calls(self, model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Recent calls of one model (or of all, each naming its model), by arrival time."""
        rings = self._rings if model is None else {model: self._rings.get(model, deque())}
        found = sorted(
            (t, status, end, name)
            for name, ring in rings.items()
            for t, status, end in ring
            if since is None or t >= since
        )
        if model is not None:
            return [{"t": t, "status": status, "end": end} for t, status, end, _ in found]
        return [{"t": t, "status": status, "end": end, "model": name} for t, status, end, name in found]

    def snapshot(self) -> dict[str, Any]:
        self._integrate()
        return {
            **self.total.as_json(),
            "responses": dict(self.responses),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "in_flight_s": round(self._in_flight_s, 6),
            "first_call_at": self.first_call_at,
            "last_call_at": self.last_call_at,
            "models": {name: counters.as_json() for name, counters in self.models.items()},
            "by_key": {name: counters.as_json() for name, counters in self.keys.items()},
        }

    @staticmethod
    def _counters(table: dict[str, Counters], name: str) -> Counters:
        counters = table.get(name)
        if counters is None:
            counters = table[name] = Counters()
        return counters
