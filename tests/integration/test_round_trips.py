"""What one batch job costs the worker in round trips, counted, not estimated (issue 12).

A 5,000-job batch is submitted through the API in this process, then run by a worker built
exactly as `workers/process.py` builds one (composition root, job runtime on its own event
loop, Dramatiq consumer threads handing job ids over) against real Postgres, real Redis and
the simulated upstream at zero latency. Every SQL statement and commit the worker's engines
send is counted with SQLAlchemy events; every Redis round trip (a command, or a whole
pipeline, written to a connection: `send_packed_command`) of the sync and asyncio clients is
counted by wrapping that method, from the moment the batch is accepted until its last job is
final. The figures are the totals divided by the jobs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis
import redis.asyncio.connection as aio_connection
import yaml
from sqlalchemy import event

from core.services.runtime import LoopThread
from core.settings import Settings
from tests.sim_process import SimHandle
from workers.actors import declare_actors, hand_offs
from workers.composition import WorkerComponents, compose

JOBS = 5_000
MAX_SQL_PER_JOB = 3.0
MAX_REDIS_PER_JOB = 3.0


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def config_path(tmp_path: Path, sim: SimHandle, upstream_model: str) -> Path:
    """The sim behind `fast`, with the response cache on, as the built-in config has it: a job
    then also reads the cache and takes the single-flight lead."""
    config = {
        "providers": {
            "sim": {"kind": "openai", "base_url": sim.openai_base_url, "timeout_s": 10, "free": True}
        },
        "models": {"fast": {"targets": [{"provider": "sim", "model": upstream_model}]}},
        "cache": {"default": True, "ttl_s": 60},
    }
    path = tmp_path / "jobgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class RoundTrips:
    """Counts SQL statements + commits on given engines, and Redis writes on every connection."""

    def __init__(self) -> None:
        self.sql = 0
        self.redis = 0
        self.counting = False
        self._lock = threading.Lock()

    def count_sql(self, *_: Any) -> None:
        if self.counting:
            with self._lock:
                self.sql += 1

    def count_redis(self) -> None:
        if self.counting:
            with self._lock:
                self.redis += 1


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    sync_send = redis.connection.AbstractConnection.send_packed_command
    async_send = aio_connection.AbstractConnection.send_packed_command

    def counted_sync(self: Any, command: Any, check_health: bool = True) -> None:
        counter.count_redis()
        sync_send(self, command, check_health)

    async def counted_async(self: Any, command: Any, check_health: bool = True) -> None:
        counter.count_redis()
        await async_send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted_sync)
    monkeypatch.setattr(aio_connection.AbstractConnection, "send_packed_command", counted_async)
    return counter


@pytest.fixture
def worker(settings: Settings, round_trips: RoundTrips) -> Iterator[WorkerComponents]:
    """A worker process's parts, in this process, with its engines counted."""
    parts = compose(settings, threads=8, webhook_threads=2, max_in_flight=1000)
    for engine in (parts.engine, parts.jobs.engine):
        event.listen(engine, "before_cursor_execute", round_trips.count_sql)
        event.listen(engine, "commit", round_trips.count_sql)
    loop = LoopThread("round-trips")
    loop.run(parts.jobs.runtime.start())
    declare_actors(parts.broker, hand_offs(parts.jobs.runtime, 1000), parts.deliverer, time_limit_s=60)
    try:
        yield parts
    finally:
        loop.run(parts.jobs.runtime.stop(grace_s=5))
        loop.run(parts.jobs.aclose())
        loop.stop()
        parts.broker.close()
        parts.engine.dispose()


def batch_lines(jobs: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "body": {"model": "fast", "messages": [{"role": "user", "content": f"n{i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(jobs)
    )


async def wait_until_done(client: httpx.AsyncClient, batch_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] == "completed" or time.monotonic() > deadline:
            return batch
        await asyncio.sleep(0.2)


async def test_a_batch_job_costs_the_worker_at_most_three_sql_and_three_redis_round_trips(
    api_client: httpx.AsyncClient, worker: WorkerComponents, round_trips: RoundTrips
) -> None:
    created = await api_client.post(
        "/v1/batches", content=batch_lines(JOBS), headers={"Content-Type": "application/x-ndjson"}
    )
    assert created.status_code == 201, created.text
    batch_id = created.json()["id"]
    consumers = [
        dramatiq.Worker(worker.broker, queues={name}, worker_threads=8, worker_timeout=1000)
        for name in ("jobs-interactive", "jobs-batch")
    ]
    round_trips.counting = True
    for consumer in consumers:
        consumer.start()
    try:
        batch = await wait_until_done(api_client, batch_id, timeout_s=240)
    finally:
        round_trips.counting = False
        for consumer in consumers:
            consumer.stop(timeout=5_000)

    assert batch["counts"]["succeeded"] == JOBS, batch["counts"]
    sql_per_job, redis_per_job = round_trips.sql / JOBS, round_trips.redis / JOBS
    print(f"\nper batch job: {sql_per_job:.2f} SQL, {redis_per_job:.2f} Redis round trips")
    assert sql_per_job <= MAX_SQL_PER_JOB
    assert redis_per_job <= MAX_REDIS_PER_JOB
