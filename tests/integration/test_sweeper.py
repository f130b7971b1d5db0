"""The fleet sweeper on real Redis and SQL: lost jobs go back on the queue, on time.

A job whose message Redis no longer holds (here: the test deletes every key of its prefix,
as a Redis restarted empty would) is enqueued again when it is due; one put back for longer
than the broker holds delays (its `not_before` lives in SQL only) is enqueued shortly before
it comes due, through the delay queue, so it runs at its time and not at the next sweep after.
A queued job whose deadline passed is failed by the sweeper, whether or not a worker takes it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import redis
import sqlalchemy as sa
from dramatiq.message import Message

from core import queue
from core.redis.keys import Keys
from core.services.maintenance import sweep
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import Job
from tests.api_calls import submit
from tests.conftest import InlineWorker
from tests.fleet import delete_prefix


async def test_sweep_enqueues_due_jobs_now_and_jobs_coming_due_with_the_rest_of_their_delay(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings, redis_client: redis.Redis
) -> None:
    due, soon, later = [(await submit(api_client, f"job {i}"))["id"] for i in range(3)]
    delete_prefix(settings.redis_url or "", settings.redis_prefix)  # Redis lost every message
    now = datetime.now(UTC)
    with inline_worker.sessions() as session:
        for job_id, delay_s in ((soon, 20), (later, 120)):
            session.execute(
                sa.update(Job).where(Job.id == job_id).values(not_before=now + timedelta(seconds=delay_s))
            )
        session.commit()
    keys = Keys(settings.redis_prefix)
    broker = queue.build_broker(settings.redis_url or "", keys, max_connections=4, timeout_s=5)
    clock = SqlClock(inline_worker.engine.dialect.name)

    try:
        report = sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=0, ahead_s=30)
    finally:
        broker.close()

    assert report.redispatched == 2
    batch_queue = f"{keys.broker_namespace}:{queue.RUN_BATCH.queue_name}"
    interactive_queue = f"{keys.broker_namespace}:{queue.RUN_INTERACTIVE.queue_name}"
    now_queued = {
        job_id
        for name in (batch_queue, interactive_queue)
        for job_id in (raw.decode() for raw in redis_client.hkeys(f"{name}.msgs"))
    }
    delayed = {
        job_id.decode(): Message.decode(data)
        for name in (batch_queue, interactive_queue)
        for job_id, data in redis_client.hgetall(f"{name}.DQ.msgs").items()
    }
    assert now_queued == {due}
    assert set(delayed) == {soon}
    eta_in_s = delayed[soon].options["eta"] / 1000 - time.time()
    assert 15 < eta_in_s <= 20


async def test_sweep_fails_queued_jobs_whose_deadline_passed_though_no_worker_took_them(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings, redis_client: redis.Redis
) -> None:
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    overdue, on_time, undated = [
        (await submit(api_client, f"job {i}", deadline=in_an_hour if i < 2 else None))["id"] for i in range(3)
    ]
    with inline_worker.sessions() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(sa.update(Job).where(Job.id == overdue).values(deadline=past))
        session.commit()
    keys = Keys(settings.redis_prefix)
    broker = queue.build_broker(settings.redis_url or "", keys, max_connections=4, timeout_s=5)
    clock = SqlClock(inline_worker.engine.dialect.name)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.job_done_channel)

    try:
        report = sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=3600)
    finally:
        broker.close()

    assert report.expired == 1
    failed = (await api_client.get(f"/v1/jobs/{overdue}")).json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "deadline_exceeded"
    assert failed["attempts"] == 0 and failed["finished_at"] is not None
    for job_id in (on_time, undated):
        assert (await api_client.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"
    announced = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert overdue.encode() in [m["data"] for m in announced if m and m["type"] == "message"]
    pubsub.close()
