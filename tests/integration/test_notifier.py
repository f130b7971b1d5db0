"""The API's job-done notifier against a real Redis: subscribed before the API serves, so the
completion of a job submitted by its very first request is heard at once (not found by the
SQL re-read seconds later), and an unreachable Redis does not stop the API from starting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from api.notifier import JobNotifier
from core.redis.keys import Keys
from core.services.lifecycle import job_done_message
from tests.fleet import free_port


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    pubsub = aioredis.Redis.from_url(redis_url)
    publisher = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    yield pubsub, publisher
    await pubsub.aclose()
    await publisher.aclose()


@pytest.fixture
async def notifier(clients: tuple[aioredis.Redis, aioredis.Redis], keys: Keys) -> AsyncIterator[JobNotifier]:
    """A started notifier on the test's channel; `clients[1]` publishes to it."""
    started = JobNotifier(clients[0], keys.job_done_channel)
    await started.start()
    yield started
    await started.stop()


async def test_start_returns_subscribed_so_the_first_completion_wakes_its_waiter(
    notifier: JobNotifier, clients: tuple[aioredis.Redis, aioredis.Redis], keys: Keys
) -> None:
    publisher = clients[1]
    [(_, subscribers)] = await publisher.pubsub_numsub(keys.job_done_channel)
    async with notifier.watch("job_first") as woken:
        # At once, as a fast job's worker would.
        await publisher.publish(keys.job_done_channel, job_done_message(["job_first"]))
        await asyncio.wait_for(woken, timeout=5)

    assert subscribers == 1


async def test_one_message_naming_a_group_of_jobs_wakes_each_of_their_waiters(
    notifier: JobNotifier, clients: tuple[aioredis.Redis, aioredis.Redis], keys: Keys
) -> None:
    async with notifier.watch("job_a") as a, notifier.watch("job_b") as b, notifier.watch("job_c") as c:
        await clients[1].publish(keys.job_done_channel, job_done_message(["job_a", "job_b"]))
        await asyncio.wait_for(asyncio.gather(a, b), timeout=5)
        assert not c.done()


async def test_an_unreachable_redis_does_not_hold_up_start(keys: Keys) -> None:
    unreachable = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
    notifier = JobNotifier(unreachable, keys.job_done_channel)
    try:
        await asyncio.wait_for(notifier.start(timeout_s=2), timeout=5)
        async with notifier.watch("job_unheard") as woken:
            assert not woken.done()
    finally:
        await notifier.stop()
        await unreachable.aclose()
