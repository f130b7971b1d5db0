"""Single-flight on a real Redis: one upstream call per fingerprint in flight, fleet-wide."""

from __future__ import annotations

import asyncio
import collections
import math
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.synchronize import Barrier as BarrierType

import pytest
import redis.asyncio as aioredis

from core.domain.chat import Completion
from core.redis.keys import Keys
from core.redis.single_flight import Flight, FlightRole, SingleFlight


class UpstreamFailed(Exception):
    pass


def completion(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(
        body={
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
        },
        input_tokens=5,
        output_tokens=2,
        finish_reason=finish_reason,
        provider="openai",
        model="gpt-4o-mini",
    )


async def run_job(
    single_flight: SingleFlight, fingerprint: str, call_upstream: Callable[[], Awaitable[Completion]]
) -> Completion:
    """The protocol as a worker follows it (see core/redis/single_flight.py)."""
    flight = await single_flight.begin(fingerprint)
    while True:
        if flight.is_done:
            assert flight.result is not None
            return flight.result
        if flight.is_leader:
            try:
                answer = await call_upstream()
            except UpstreamFailed:
                await single_flight.abandon(flight, True)
                raise
            await single_flight.complete(flight, answer)
            return answer
        result = await single_flight.wait(flight, timeout_s=10)
        if result is not None:
            return result
        flight = await single_flight.begin(fingerprint)


class WaitingFollower:
    """`await single_flight.wait(flight)` running as its own task, as another job on the loop would."""

    def __init__(self, single_flight: SingleFlight, flight: Flight | str, *, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._elapsed_s = math.nan
        self._task = asyncio.create_task(self._wait(single_flight, flight))

    @classmethod
    async def start(
        cls, single_flight: SingleFlight, flight: Flight | str, *, timeout_s: float
    ) -> WaitingFollower:
        follower = cls(single_flight, flight, timeout_s=timeout_s)
        await asyncio.sleep(0.1)  # long enough for the follower to be blocked in Redis
        return follower

    async def _wait(self, single_flight: SingleFlight, flight: Flight | str) -> Completion | None:
        started = time.monotonic()
        result = await single_flight.wait(flight, timeout_s=self._timeout_s)
        self._elapsed_s = time.monotonic() - started
        return result

    async def outcome(self) -> tuple[Completion | None, float]:
        """What `wait` returned, and how long it took."""
        done, _ = await asyncio.wait({self._task}, timeout=self._timeout_s + 5)
        if not done:
            self._task.cancel()
        assert done, "follower still waiting"
        return self._task.result(), self._elapsed_s


@pytest.fixture
def single_flight(async_redis_client: aioredis.Redis, keys: Keys) -> SingleFlight:
    return SingleFlight(async_redis_client, keys)


@pytest.fixture
async def pooled_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client whose pool holds one connection per waiting task plus a margin."""
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=120, timeout=10, socket_timeout=5
    )
    client = aioredis.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.disconnect()


async def test_first_caller_leads_and_later_callers_follow(single_flight: SingleFlight) -> None:
    leader = await single_flight.begin("fp")
    follower = await single_flight.begin("fp")
    assert leader.role is FlightRole.LEADER
    assert follower.role is FlightRole.FOLLOWER
    assert follower.leader_token == leader.leader_token
    assert 0 < follower.lock_ttl_ms <= 120_000


async def test_identical_requests_in_flight_make_one_upstream_call(
    pooled_client: aioredis.Redis, keys: Keys
) -> None:
    single_flight = SingleFlight(pooled_client, keys)
    fingerprints = [f"prompt-{i}" for i in range(10)]
    calls: collections.Counter[str] = collections.Counter()

    async def job(fingerprint: str) -> tuple[str, Completion]:
        async def call_upstream() -> Completion:
            calls[fingerprint] += 1
            await asyncio.sleep(0.2)
            return completion(f"answer to {fingerprint}")

        return fingerprint, await run_job(single_flight, fingerprint, call_upstream)

    # 100 jobs at once, each on its own pooled connection.
    results = await asyncio.gather(*(job(fingerprints[i % 10]) for i in range(100)))

    assert calls == collections.Counter({fingerprint: 1 for fingerprint in fingerprints})
    assert len(results) == 100
    for fingerprint, result in results:
        assert result == completion(f"answer to {fingerprint}")


def run_jobs_in_worker_process(
    redis_url: str, prefix: str, fingerprints: list[str], tasks: int, start: BarrierType
) -> None:
    """One worker process: its own event loop and pool, `tasks` jobs at once; exits non-zero on a
    wrong answer."""
    start.wait(timeout=30)
    answers_right = asyncio.run(run_jobs_on_one_loop(redis_url, prefix, fingerprints, tasks))
    sys.exit(0 if all(answers_right) else 1)


async def run_jobs_on_one_loop(
    redis_url: str, prefix: str, fingerprints: list[str], tasks: int
) -> list[bool]:
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=tasks + 10, timeout=10, socket_timeout=5
    )
    client = aioredis.Redis(connection_pool=pool)
    single_flight = SingleFlight(client, Keys(prefix))

    async def job(fingerprint: str) -> bool:
        async def call_upstream() -> Completion:
            await client.hincrby(f"{prefix}:test-upstream-calls", fingerprint, 1)
            await asyncio.sleep(0.3)
            return completion(f"answer to {fingerprint}")

        answer = await run_job(single_flight, fingerprint, call_upstream)
        return answer == completion(f"answer to {fingerprint}")

    try:
        return await asyncio.gather(*(job(fingerprints[i % len(fingerprints)]) for i in range(tasks)))
    finally:
        await client.aclose()
        await pool.disconnect()


async def test_identical_requests_across_worker_processes_make_one_upstream_call(
    redis_url: str, async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    context = multiprocessing.get_context("spawn")
    fingerprints = [f"prompt-{i}" for i in range(10)]
    start = context.Barrier(4)
    workers = [
        context.Process(
            target=run_jobs_in_worker_process, args=(redis_url, keys.prefix, fingerprints, 40, start)
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    await asyncio.to_thread(start.wait, timeout=30)
    for worker in workers:
        await asyncio.to_thread(worker.join, timeout=30)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    calls = await async_redis_client.hgetall(f"{keys.prefix}:test-upstream-calls")
    assert calls == {fingerprint.encode(): b"1" for fingerprint in fingerprints}


async def test_followers_wake_when_leader_abandons(single_flight: SingleFlight) -> None:
    leader = await single_flight.begin("fp")
    followers = [
        await WaitingFollower.start(single_flight, await single_flight.begin("fp"), timeout_s=10)
        for _ in range(5)
    ]
    assert await single_flight.abandon(leader, False) is True
    for follower in followers:
        result, elapsed_s = await follower.outcome()
        assert result is None
        assert elapsed_s < 2.0  # woken, not timed out
    assert (await single_flight.begin("fp")).is_leader


async def test_lock_expires_when_leader_dies(async_redis_client: aioredis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(async_redis_client, keys, lock_ttl_s=0.3)
    await single_flight.begin("fp")  # this leader dies: it never completes nor abandons
    follower = await single_flight.begin("fp")
    assert follower.is_follower
    started = time.monotonic()
    assert await single_flight.wait(follower, timeout_s=10) is None
    assert time.monotonic() - started < 2.0  # woken by the lock's expiry, not the timeout
    assert (await single_flight.begin("fp")).is_leader


async def test_late_follower_reads_result_without_waiting(single_flight: SingleFlight) -> None:
    leader = await single_flight.begin("fp")
    assert await single_flight.complete(leader, completion("done")) is True
    late = await single_flight.begin("fp")
    assert late.role is FlightRole.DONE
    assert late.result == completion("done")
    assert await single_flight.wait(late, timeout_s=5) == completion("done")


async def test_result_is_kept_only_briefly(async_redis_client: aioredis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(async_redis_client, keys, result_ttl_s=2)
    await single_flight.complete(await single_flight.begin("fp"), completion("done"))
    assert 0 < await async_redis_client.pttl(keys.flight_result("fp")) <= 2000
    assert await async_redis_client.exists(keys.flight("fp")) == 0


async def test_follower_gets_the_leaders_answer(single_flight: SingleFlight) -> None:
    leader = await single_flight.begin("fp")
    follower = await WaitingFollower.start(single_flight, await single_flight.begin("fp"), timeout_s=10)
    await single_flight.complete(leader, completion("shared"))
    result, elapsed_s = await follower.outcome()
    assert result == completion("shared")
    assert elapsed_s < 2.0


async def test_only_the_lock_owner_can_release_it(async_redis_client: aioredis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(async_redis_client, keys, lock_ttl_s=0.1)
    stale = await single_flight.begin("fp")
    await asyncio.sleep(0.2)
    current = await single_flight.begin("fp")
    assert current.is_leader
    assert await single_flight.abandon(stale, True) is False
    assert await single_flight.extend(stale) is False
    assert await async_redis_client.get(keys.flight("fp")) == current.leader_token.encode()  # type: ignore[union-attr]


async def test_leader_whose_lock_expired_still_publishes_its_answer(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    single_flight = SingleFlight(async_redis_client, keys, lock_ttl_s=0.1)
    slow = await single_flight.begin("fp")
    await asyncio.sleep(0.2)
    current = await single_flight.begin("fp")
    assert await single_flight.complete(slow, completion("late but good")) is False
    assert await async_redis_client.get(keys.flight("fp")) == current.leader_token.encode()  # type: ignore[union-attr]
    assert (await single_flight.begin("fp")).result == completion("late but good")


async def test_leader_extends_lock_and_followers_keep_waiting_for_a_long_call(
    async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    single_flight = SingleFlight(async_redis_client, keys, lock_ttl_s=0.5)
    leader = await single_flight.begin("fp")
    follower = await WaitingFollower.start(single_flight, await single_flight.begin("fp"), timeout_s=10)
    for _ in range(4):  # the call runs 1.1 s, more than twice the lock TTL
        await asyncio.sleep(0.25)
        assert await single_flight.extend(leader) is True
    await single_flight.complete(leader, completion("slow answer"))
    result, _ = await follower.outcome()
    assert result == completion("slow answer")


async def test_wait_gives_up_at_its_timeout_while_the_leader_still_runs(single_flight: SingleFlight) -> None:
    await single_flight.begin("fp")
    started = time.monotonic()
    assert await single_flight.wait(await single_flight.begin("fp"), timeout_s=0.3) is None
    assert 0.25 < time.monotonic() - started < 1.0


async def test_follower_wait_may_outlast_the_socket_timeout(redis_url: str, keys: Keys) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5)
    try:
        single_flight = SingleFlight(client, keys)
        leader = await single_flight.begin("fp")
        follower = await WaitingFollower.start(single_flight, await single_flight.begin("fp"), timeout_s=5)
        await asyncio.sleep(1.0)  # the follower's wait spans several socket timeouts
        await single_flight.complete(leader, completion("after a while"))
        result, _ = await follower.outcome()
        assert result == completion("after a while")
    finally:
        await client.aclose()


async def test_waiting_on_a_fingerprint_follows_the_running_flight(single_flight: SingleFlight) -> None:
    leader = await single_flight.begin("fp")
    follower = await WaitingFollower.start(single_flight, "fp", timeout_s=10)
    await single_flight.complete(leader, completion("by fingerprint"))
    result, _ = await follower.outcome()
    assert result == completion("by fingerprint")


async def test_waiting_on_a_fingerprint_with_nothing_in_flight_returns_at_once(
    single_flight: SingleFlight,
) -> None:
    started = time.monotonic()
    assert await single_flight.wait("idle-fp", timeout_s=5) is None
    assert time.monotonic() - started < 0.5


async def test_partial_answer_cannot_complete_a_flight(
    single_flight: SingleFlight, async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    leader = await single_flight.begin("fp")
    with pytest.raises(ValueError, match="finish_reason"):
        await single_flight.complete(leader, completion("cut off", finish_reason="unknown"))
    assert await async_redis_client.exists(keys.flight_result("fp")) == 0
    assert (await single_flight.begin("fp")).is_follower


async def test_only_the_leader_may_complete_abandon_or_extend(single_flight: SingleFlight) -> None:
    await single_flight.begin("fp")
    follower = await single_flight.begin("fp")
    with pytest.raises(ValueError, match="leader"):
        await single_flight.complete(follower, completion("x"))
    with pytest.raises(ValueError, match="leader"):
        await single_flight.abandon(follower, True)
    with pytest.raises(ValueError, match="leader"):
        await single_flight.extend(follower)


async def test_leader_cannot_wait_for_its_own_flight(single_flight: SingleFlight) -> None:
    with pytest.raises(ValueError, match="leader"):
        await single_flight.wait(await single_flight.begin("fp"), timeout_s=1)


async def test_a_follower_takes_over_after_the_leaders_upstream_call_fails(
    single_flight: SingleFlight,
) -> None:
    attempts: list[str] = []
    first_call_started = asyncio.Event()

    async def failing_call() -> Completion:
        attempts.append("failed")
        first_call_started.set()
        await asyncio.sleep(0.2)
        raise UpstreamFailed

    async def good_call() -> Completion:
        attempts.append("ok")
        return completion("second try")

    failing = asyncio.create_task(run_job(single_flight, "fp", failing_call))
    await asyncio.wait_for(first_call_started.wait(), timeout=5)
    succeeding = asyncio.create_task(run_job(single_flight, "fp", good_call))
    with pytest.raises(UpstreamFailed):
        await asyncio.wait_for(failing, timeout=5)
    assert await asyncio.wait_for(succeeding, timeout=5) == completion("second try")
    assert attempts == ["failed", "ok"]
