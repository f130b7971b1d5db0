"""Single-flight on a real Redis: one upstream call per fingerprint in flight, fleet-wide."""

from __future__ import annotations

import collections
import math
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier as BarrierType

import pytest
import redis

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


def run_job(
    single_flight: SingleFlight, fingerprint: str, call_upstream: Callable[[], Completion]
) -> Completion:
    """The protocol as a worker follows it (see core/redis/single_flight.py)."""
    flight = single_flight.begin(fingerprint)
    while True:
        if flight.is_done:
            assert flight.result is not None
            return flight.result
        if flight.is_leader:
            try:
                answer = call_upstream()
            except UpstreamFailed:
                single_flight.abandon(flight, True)
                raise
            single_flight.complete(flight, answer)
            return answer
        result = single_flight.wait(flight, timeout_s=10)
        if result is not None:
            return result
        flight = single_flight.begin(fingerprint)


class WaitingFollower:
    """`single_flight.wait(flight)` running in its own thread, as another worker thread would."""

    def __init__(self, single_flight: SingleFlight, flight: Flight | str, *, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._result: Completion | None = None
        self._elapsed_s = math.nan
        self._thread = threading.Thread(target=self._wait, args=(single_flight, flight))
        self._thread.start()
        time.sleep(0.1)  # long enough for the follower to be blocked in Redis

    def _wait(self, single_flight: SingleFlight, flight: Flight | str) -> None:
        started = time.monotonic()
        self._result = single_flight.wait(flight, timeout_s=self._timeout_s)
        self._elapsed_s = time.monotonic() - started

    def outcome(self) -> tuple[Completion | None, float]:
        """What `wait` returned, and how long it took."""
        self._thread.join(timeout=self._timeout_s + 5)
        assert not self._thread.is_alive(), "follower still waiting"
        return self._result, self._elapsed_s


@pytest.fixture
def single_flight(redis_client: redis.Redis, keys: Keys) -> SingleFlight:
    return SingleFlight(redis_client, keys)


@pytest.fixture
def pooled_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client whose pool holds one connection per waiting thread plus a margin."""
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=120, timeout=10, socket_timeout=5)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()
    pool.disconnect()


def test_first_caller_leads_and_later_callers_follow(single_flight: SingleFlight) -> None:
    leader = single_flight.begin("fp")
    follower = single_flight.begin("fp")
    assert leader.role is FlightRole.LEADER
    assert follower.role is FlightRole.FOLLOWER
    assert follower.leader_token == leader.leader_token
    assert 0 < follower.lock_ttl_ms <= 120_000


def test_identical_requests_in_flight_make_one_upstream_call(pooled_client: redis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(pooled_client, keys)
    fingerprints = [f"prompt-{i}" for i in range(10)]
    calls: collections.Counter[str] = collections.Counter()
    counter_lock = threading.Lock()
    start = threading.Barrier(100)

    def job(fingerprint: str) -> tuple[str, Completion]:
        def call_upstream() -> Completion:
            with counter_lock:
                calls[fingerprint] += 1
            time.sleep(0.2)
            return completion(f"answer to {fingerprint}")

        start.wait()
        return fingerprint, run_job(single_flight, fingerprint, call_upstream)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(job, [fingerprints[i % 10] for i in range(100)]))

    assert calls == collections.Counter({fingerprint: 1 for fingerprint in fingerprints})
    assert len(results) == 100
    for fingerprint, result in results:
        assert result == completion(f"answer to {fingerprint}")


def run_jobs_in_worker_process(
    redis_url: str, prefix: str, fingerprints: list[str], threads: int, start: BarrierType
) -> None:
    """One worker process: its own pool, `threads` jobs at once; exits non-zero on a wrong answer."""
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=threads + 10, timeout=10, socket_timeout=5
    )
    client = redis.Redis(connection_pool=pool)
    single_flight = SingleFlight(client, Keys(prefix))

    def job(fingerprint: str) -> bool:
        def call_upstream() -> Completion:
            client.hincrby(f"{prefix}:test-upstream-calls", fingerprint, 1)
            time.sleep(0.3)
            return completion(f"answer to {fingerprint}")

        return run_job(single_flight, fingerprint, call_upstream) == completion(f"answer to {fingerprint}")

    start.wait(timeout=30)
    with ThreadPoolExecutor(max_workers=threads) as executor:
        answers_right = list(executor.map(job, [fingerprints[i % len(fingerprints)] for i in range(threads)]))
    sys.exit(0 if all(answers_right) else 1)


def test_identical_requests_across_worker_processes_make_one_upstream_call(
    redis_url: str, redis_client: redis.Redis, keys: Keys
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
    start.wait(timeout=30)
    for worker in workers:
        worker.join(timeout=30)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    calls = redis_client.hgetall(f"{keys.prefix}:test-upstream-calls")
    assert calls == {fingerprint.encode(): b"1" for fingerprint in fingerprints}


def test_followers_wake_when_leader_abandons(single_flight: SingleFlight) -> None:
    leader = single_flight.begin("fp")
    followers = [WaitingFollower(single_flight, single_flight.begin("fp"), timeout_s=10) for _ in range(5)]
    assert single_flight.abandon(leader, False) is True
    for follower in followers:
        result, elapsed_s = follower.outcome()
        assert result is None
        assert elapsed_s < 2.0  # woken, not timed out
    assert single_flight.begin("fp").is_leader


def test_lock_expires_when_leader_dies(redis_client: redis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(redis_client, keys, lock_ttl_s=0.3)
    single_flight.begin("fp")  # this leader dies: it never completes nor abandons
    follower = single_flight.begin("fp")
    assert follower.is_follower
    started = time.monotonic()
    assert single_flight.wait(follower, timeout_s=10) is None
    assert time.monotonic() - started < 2.0  # woken by the lock's expiry, not the timeout
    assert single_flight.begin("fp").is_leader


def test_late_follower_reads_result_without_waiting(single_flight: SingleFlight) -> None:
    leader = single_flight.begin("fp")
    assert single_flight.complete(leader, completion("done")) is True
    late = single_flight.begin("fp")
    assert late.role is FlightRole.DONE
    assert late.result == completion("done")
    assert single_flight.wait(late, timeout_s=5) == completion("done")


def test_result_is_kept_only_briefly(redis_client: redis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(redis_client, keys, result_ttl_s=2)
    single_flight.complete(single_flight.begin("fp"), completion("done"))
    assert 0 < redis_client.pttl(keys.flight_result("fp")) <= 2000
    assert redis_client.exists(keys.flight("fp")) == 0


def test_follower_gets_the_leaders_answer(single_flight: SingleFlight) -> None:
    leader = single_flight.begin("fp")
    follower = WaitingFollower(single_flight, single_flight.begin("fp"), timeout_s=10)
    single_flight.complete(leader, completion("shared"))
    result, elapsed_s = follower.outcome()
    assert result == completion("shared")
    assert elapsed_s < 2.0


def test_only_the_lock_owner_can_release_it(redis_client: redis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(redis_client, keys, lock_ttl_s=0.1)
    stale = single_flight.begin("fp")
    time.sleep(0.2)
    current = single_flight.begin("fp")
    assert current.is_leader
    assert single_flight.abandon(stale, True) is False
    assert single_flight.extend(stale) is False
    assert redis_client.get(keys.flight("fp")) == current.leader_token.encode()  # type: ignore[union-attr]


def test_leader_whose_lock_expired_still_publishes_its_answer(redis_client: redis.Redis, keys: Keys) -> None:
    single_flight = SingleFlight(redis_client, keys, lock_ttl_s=0.1)
    slow = single_flight.begin("fp")
    time.sleep(0.2)
    current = single_flight.begin("fp")
    assert single_flight.complete(slow, completion("late but good")) is False
    assert redis_client.get(keys.flight("fp")) == current.leader_token.encode()  # type: ignore[union-attr]
    assert single_flight.begin("fp").result == completion("late but good")


def test_leader_extends_lock_and_followers_keep_waiting_for_a_long_call(
    redis_client: redis.Redis, keys: Keys
) -> None:
    single_flight = SingleFlight(redis_client, keys, lock_ttl_s=0.5)
    leader = single_flight.begin("fp")
    follower = WaitingFollower(single_flight, single_flight.begin("fp"), timeout_s=10)
    for _ in range(4):  # the call runs 1.1 s, more than twice the lock TTL
        time.sleep(0.25)
        assert single_flight.extend(leader) is True
    single_flight.complete(leader, completion("slow answer"))
    result, _ = follower.outcome()
    assert result == completion("slow answer")


def test_wait_gives_up_at_its_timeout_while_the_leader_still_runs(single_flight: SingleFlight) -> None:
    single_flight.begin("fp")
    started = time.monotonic()
    assert single_flight.wait(single_flight.begin("fp"), timeout_s=0.3) is None
    assert 0.25 < time.monotonic() - started < 1.0


def test_follower_wait_may_outlast_the_socket_timeout(redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5)
    try:
        single_flight = SingleFlight(client, keys)
        leader = single_flight.begin("fp")
        follower = WaitingFollower(single_flight, single_flight.begin("fp"), timeout_s=5)
        time.sleep(1.0)  # the follower's wait spans several socket timeouts
        single_flight.complete(leader, completion("after a while"))
        result, _ = follower.outcome()
        assert result == completion("after a while")
    finally:
        client.close()


def test_waiting_on_a_fingerprint_follows_the_running_flight(single_flight: SingleFlight) -> None:
    leader = single_flight.begin("fp")
    follower = WaitingFollower(single_flight, "fp", timeout_s=10)
    single_flight.complete(leader, completion("by fingerprint"))
    result, _ = follower.outcome()
    assert result == completion("by fingerprint")


def test_waiting_on_a_fingerprint_with_nothing_in_flight_returns_at_once(single_flight: SingleFlight) -> None:
    started = time.monotonic()
    assert single_flight.wait("idle-fp", timeout_s=5) is None
    assert time.monotonic() - started < 0.5


def test_partial_answer_cannot_complete_a_flight(
    single_flight: SingleFlight, redis_client: redis.Redis, keys: Keys
) -> None:
    leader = single_flight.begin("fp")
    with pytest.raises(ValueError, match="finish_reason"):
        single_flight.complete(leader, completion("cut off", finish_reason="unknown"))
    assert redis_client.exists(keys.flight_result("fp")) == 0
    assert single_flight.begin("fp").is_follower


def test_only_the_leader_may_complete_abandon_or_extend(single_flight: SingleFlight) -> None:
    single_flight.begin("fp")
    follower = single_flight.begin("fp")
    with pytest.raises(ValueError, match="leader"):
        single_flight.complete(follower, completion("x"))
    with pytest.raises(ValueError, match="leader"):
        single_flight.abandon(follower, True)
    with pytest.raises(ValueError, match="leader"):
        single_flight.extend(follower)


def test_leader_cannot_wait_for_its_own_flight(single_flight: SingleFlight) -> None:
    with pytest.raises(ValueError, match="leader"):
        single_flight.wait(single_flight.begin("fp"), timeout_s=1)


def test_a_follower_takes_over_after_the_leaders_upstream_call_fails(single_flight: SingleFlight) -> None:
    attempts: list[str] = []
    first_call_started = threading.Event()

    def failing_call() -> Completion:
        attempts.append("failed")
        first_call_started.set()
        time.sleep(0.2)
        raise UpstreamFailed

    def good_call() -> Completion:
        attempts.append("ok")
        return completion("second try")

    with ThreadPoolExecutor(max_workers=2) as pool:
        failing = pool.submit(run_job, single_flight, "fp", failing_call)
        assert first_call_started.wait(timeout=5)
        succeeding = pool.submit(run_job, single_flight, "fp", good_call)
        with pytest.raises(UpstreamFailed):
            failing.result(timeout=5)
        assert succeeding.result(timeout=5) == completion("second try")
    assert attempts == ["failed", "ok"]
