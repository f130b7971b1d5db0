"""Single-flight: concurrent identical requests, fleet-wide, make one upstream call.

The first caller for a fingerprint becomes the flight's *leader* (a Redis lock holding its
random owner token, with a TTL so a dead leader's lock expires); everyone else arriving while
it runs is a *follower* and blocks until the leader publishes its answer or gives up. The
answer stays readable for a short while (`result_ttl_s`) so that callers arriving just after
the leader finished take it instead of calling again. Every method is a coroutine on a
`redis.asyncio` client. The protocol, for one job::

    flight = await single_flight.begin(fp)
    while True:
        if flight.is_done:                 # a leader finished moments ago
            return flight.result
        if flight.is_leader:
            try:
                completion = await call_upstream()   # extend(flight) now and then on long calls
            except UpstreamError as exc:
                await single_flight.abandon(flight, exc.retryable)
                raise
            await single_flight.complete(flight, completion)
            return completion
        completion = await single_flight.wait(flight, timeout_s=30)
        if completion is not None:
            return completion
        flight = await single_flight.begin(fp)   # leader gone or gave up: try to take over

Followers block on a per-flight wake list with `BLMOVE` (see `single_flight.lua`), never by
polling: they wake when the leader completes or abandons, or when the leader's lock is due to
expire (to check whether it died), or just before the client's socket timeout.

Connection pools: a waiting follower holds one pooled connection for its whole wait, so the
pool this class uses must allow at least one connection per task that may wait at once, plus
a margin for the leaders' own commands and anything else sharing the pool (a
`BlockingConnectionPool` sized waiting tasks + margin, or a pool of its own). The client's
`socket_timeout` may be shorter than a wait: waits are cut into blocking calls shorter than it.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from core.domain.chat import Completion
from core.redis.keys import Keys
from core.redis.scripts import FleetScript, ScriptCall, run_call
from core.redis.stored_completion import (
    STORED_COMPLETION_VERSION,
    completion_from_document,
    completion_to_document,
    load_completion,
)

logger = logging.getLogger(__name__)

SCRIPT = FleetScript(Path(__file__).with_name("single_flight.lua").read_text(encoding="utf-8"))

DEFAULT_LOCK_TTL_S = 120.0
DEFAULT_RESULT_TTL_S = 30.0

# After a leader's lock is due to expire, followers look again this much later: Redis expires
# a key when it is next read, so a read a moment after its deadline reliably sees it gone.
_LOCK_EXPIRY_GRACE_S = 0.05

# A blocking call must end this long before the client's socket timeout, or redis-py gives up
# on the socket first: Redis times out blocked clients on its cron tick (hz 10 by default, so up
# to ~100 ms late), and the reply still has to travel. Socket timeouts of 1 s and more suit waits.
_SOCKET_TIMEOUT_MARGIN_S = 0.5

# Redis reads a blocking timeout of 0 as "forever".
_MIN_BLOCK_S = 0.001


class FlightRole(enum.Enum):
    LEADER = "leader"  # this caller must call upstream, then complete() or abandon()
    FOLLOWER = "follower"  # another caller is calling upstream; wait() for its answer
    DONE = "done"  # a leader finished moments ago; its answer is in Flight.result


@dataclass(frozen=True)
class Flight:
    """What `begin` found for one fingerprint."""

    fingerprint: str
    role: FlightRole
    leader_token: str | None  # the lock's owner token (this caller's own when LEADER); None when DONE
    lock_ttl_ms: int  # how long the leader's lock had to live when this was read; 0 when DONE
    result: Completion | None = None  # set only when DONE

    @property
    def is_leader(self) -> bool:
        return self.role is FlightRole.LEADER

    @property
    def is_follower(self) -> bool:
        return self.role is FlightRole.FOLLOWER

    @property
    def is_done(self) -> bool:
        return self.role is FlightRole.DONE


def _random_token() -> str:
    return secrets.token_hex(16)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class SingleFlight:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        lock_ttl_s: float = DEFAULT_LOCK_TTL_S,
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        new_token: Callable[[], str] = _random_token,
        wait_client: aioredis.Redis | None = None,
    ) -> None:
        """`lock_ttl_s` bounds how long followers wait for a leader that died; make it longer
        than one upstream call (the provider timeout plus a margin), or `extend` on long calls.
        `clock` is a monotonic clock in seconds, for the follower's deadline. `wait_client`
        (default `client`) serves the followers' blocking waits, each of which holds a
        connection: with a pool of its own, a thousand twins waiting on one leader cannot
        take the connections the leader needs to answer them."""
        if lock_ttl_s <= 0 or result_ttl_s <= 0:
            raise ValueError("lock_ttl_s and result_ttl_s must be positive")
        self.client = client
        self._keys = keys
        self._lock_ttl_ms = max(1, round(lock_ttl_s * 1000))
        self._result_ttl_ms = max(1, round(result_ttl_s * 1000))
        self._clock = clock
        self._new_token = new_token
        self.wait_client = wait_client or client
        socket_timeout_s = self.wait_client.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_block_s = (
            max(socket_timeout_s - _SOCKET_TIMEOUT_MARGIN_S, socket_timeout_s / 2)
            if socket_timeout_s
            else math.inf
        )

    async def begin(self, fingerprint: str) -> Flight:
        """Take the lead for `fingerprint`, or learn who has it, or find the answer just made."""
        return self.flight_from(fingerprint, await run_call(self.client, self.begin_call(fingerprint)))

    def begin_call(self, fingerprint: str) -> ScriptCall:
        """`begin` as a script call, to ride in a pipeline; `flight_from` reads its reply."""
        return SCRIPT.call(
            [self._keys.flight(fingerprint), self._keys.flight_result(fingerprint)],
            ["begin", self._new_token(), self._lock_ttl_ms, STORED_COMPLETION_VERSION],
        )

    @staticmethod
    def flight_from(fingerprint: str, reply: list[Any]) -> Flight:
        role = FlightRole(_text(reply[0]))
        if role is FlightRole.DONE:
            result = load_completion(reply[1])
            if result is None:  # the script only returns results in our format version
                raise ValueError("single-flight result in an unexpected format version")
            return Flight(fingerprint, role, leader_token=None, lock_ttl_ms=0, result=result)
        return Flight(fingerprint, role, leader_token=_text(reply[1]), lock_ttl_ms=int(reply[2]))

    async def complete(self, flight: Flight, completion: Completion) -> bool:
        """Publish the leader's answer to its followers and to late arrivals; release the lock.

        Raises ValueError for a partial answer (use `abandon`). Returns False when the lock had
        already expired (the answer is published all the same).
        """
        return bool(await run_call(self.client, self.complete_call(flight, completion)))

    def complete_call(self, flight: Flight, completion: Completion) -> ScriptCall:
        """`complete` as a script call, to ride in the group writer's after-commit pipeline."""
        token = self._leader_token(flight)
        document = completion_to_document(completion)  # raises ValueError for a partial answer
        return SCRIPT.call(
            [
                self._keys.flight(flight.fingerprint),
                self._keys.flight_result(flight.fingerprint),
                self._keys.flight_wake(flight.fingerprint, token),
            ],
            [
                "complete",
                token,
                json.dumps(document, separators=(",", ":"), ensure_ascii=False),
                json.dumps(
                    {"outcome": "completed", "completion": document},
                    separators=(",", ":"),
                    ensure_ascii=False,
                ),
                self._result_ttl_ms,
            ],
        )

    async def abandon(self, flight: Flight, error_retryable: bool) -> bool:
        """Give up leading: wake the followers at once (their `wait` returns None) and release
        the lock so one of them can take over. `error_retryable` says whether the leader's
        error was one a retry may cure; followers log it. Returns False when the lock had
        already expired."""
        return bool(await run_call(self.client, self.abandon_call(flight, error_retryable)))

    def abandon_call(self, flight: Flight, error_retryable: bool) -> ScriptCall:
        """`abandon` as a script call, to ride in a pipeline."""
        token = self._leader_token(flight)
        return SCRIPT.call(
            [self._keys.flight(flight.fingerprint), self._keys.flight_wake(flight.fingerprint, token)],
            [
                "abandon",
                token,
                json.dumps({"outcome": "abandoned", "retryable": error_retryable}),
                self._result_ttl_ms,
            ],
        )

    async def extend(self, flight: Flight, *, ttl_s: float | None = None) -> bool:
        """Keep leading for `ttl_s` (default: the lock TTL) from now. False if the lock was lost:
        another caller may be leading by now, and this leader's answer is still worth publishing
        with `complete`."""
        token = self._leader_token(flight)
        ttl_ms = self._lock_ttl_ms if ttl_s is None else max(1, round(ttl_s * 1000))
        call = SCRIPT.call([self._keys.flight(flight.fingerprint)], ["extend", token, ttl_ms])
        reply = await run_call(self.client, call)
        return bool(reply)

    async def wait(self, flight_or_fingerprint: Flight | str, *, timeout_s: float) -> Completion | None:
        """Block until the flight's leader publishes its answer, and return it.

        Returns None when the leader abandons, dies (its lock expires), another leader's turn
        has begun, or `timeout_s` passes; the caller may then `begin` again. Given a bare
        fingerprint, follows whichever flight is running for it (None at once if none is).
        """
        deadline = self._clock() + timeout_s
        if isinstance(flight_or_fingerprint, str):
            observed = await self._observe(flight_or_fingerprint)
            if observed is None:
                return None
            flight = observed
        else:
            flight = flight_or_fingerprint
            if flight.is_leader:
                raise ValueError("the leader of a flight cannot wait for it")
        if flight.is_done or flight.leader_token is None:
            return flight.result

        token = flight.leader_token
        wake_key = self._keys.flight_wake(flight.fingerprint, token)
        lock_expires_at = self._clock() + flight.lock_ttl_ms / 1000
        while True:
            now = self._clock()
            if now >= deadline:
                return None
            until_lock_expiry_s = max(0.0, lock_expires_at - now) + _LOCK_EXPIRY_GRACE_S
            block_s = max(_MIN_BLOCK_S, round(min(deadline - now, until_lock_expiry_s, self._max_block_s), 3))
            # Redis takes a fractional timeout (since 6.0); redis-py's annotation says int.
            payload = await self.wait_client.blmove(wake_key, wake_key, block_s, "LEFT", "RIGHT")  # type: ignore[arg-type]
            if payload is not None:
                return self._outcome(flight.fingerprint, payload)
            current = await self._observe(flight.fingerprint)
            if current is None or current.leader_token != token:
                # The lock expired (the leader died) or another leader's turn began: the leader
                # we followed will never wake us. A result it or its successor left still counts.
                return current.result if current is not None and current.is_done else None
            lock_expires_at = self._clock() + current.lock_ttl_ms / 1000

    async def _observe(self, fingerprint: str) -> Flight | None:
        """A consistent read of the flight's state, without joining or taking it."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self._keys.flight_result(fingerprint))
            pipe.get(self._keys.flight(fingerprint))
            pipe.pttl(self._keys.flight(fingerprint))
            raw_result, raw_token, lock_pttl_ms = await pipe.execute()
        if raw_result is not None:
            result = load_completion(raw_result)
            if result is not None:
                return Flight(fingerprint, FlightRole.DONE, leader_token=None, lock_ttl_ms=0, result=result)
        if raw_token is None:
            return None
        return Flight(
            fingerprint, FlightRole.FOLLOWER, leader_token=_text(raw_token), lock_ttl_ms=int(lock_pttl_ms)
        )

    def _outcome(self, fingerprint: str, payload: bytes | str) -> Completion | None:
        message: dict[str, Any] = json.loads(payload)
        if message["outcome"] == "completed":
            return completion_from_document(message["completion"])
        logger.debug(
            "single-flight leader abandoned; follower released",
            extra={"fingerprint": fingerprint, "leader_error_retryable": message["retryable"]},
        )
        return None

    @staticmethod
    def _leader_token(flight: Flight) -> str:
        if not flight.is_leader or flight.leader_token is None:
            raise ValueError(f"only a flight's leader may do this; this flight's role is {flight.role.value}")
        return flight.leader_token
