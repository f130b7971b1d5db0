"""A job delivered twice runs once: the claim in SQL, not the broker, decides who runs it.

A real worker process (`python -m workers`) consumes two messages for one job: the API's own
and a duplicate with another Redis message id (as a redelivery after a lost ack, or the
sweeper racing the API, would produce). The simulated upstream must see one call, and the
job one attempt, whether the duplicate arrives while the job runs or after it finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from dramatiq.brokers.redis import RedisBroker

from core import queue
from core.redis.keys import Keys
from core.settings import Settings
from tests.conftest import sim_calls, sqlite_only
from tests.processes import ServiceProcess, wait_until
from tests.sim_process import SimHandle

UPSTREAM_LATENCY_MS = 400


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    assert settings.redis_url is not None
    broker = queue.build_broker(
        settings.redis_url, Keys(settings.redis_prefix), max_connections=4, timeout_s=5
    )
    yield broker
    broker.close()


def enqueue_duplicate(broker: RedisBroker, job_id: str, message_id: str) -> None:
    """A second `run_interactive_job(job_id)` message, under a Redis message id of its own."""
    queue.enqueue_messages(broker, [(queue.RUN_INTERACTIVE, message_id, (job_id,))])


def wait_until_acked(broker: RedisBroker, message_ids: list[str], timeout_s: float = 15) -> None:
    """Until no message with these ids is queued or unacked: each was delivered and finished."""
    data = f"{broker.namespace}:{queue.RUN_INTERACTIVE.queue_name}.msgs"
    wait_until(
        lambda: not any(broker.client.hexists(data, message_id) for message_id in message_ids),
        timeout_s=timeout_s,
        what=f"messages {message_ids} to be consumed and acked",
    )


async def submit(api_client: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
    response = await api_client.post(
        "/v1/jobs", json={"model": "fast", "messages": [{"role": "user", "content": prompt}]}
    )
    assert response.status_code == 202
    job: dict[str, Any] = response.json()
    return job


async def test_duplicate_delivered_while_the_job_runs_makes_one_upstream_call(
    api_client: httpx.AsyncClient,
    broker: RedisBroker,
    worker_process: Callable[..., ServiceProcess],
    sim: SimHandle,
    upstream_model: str,
) -> None:
    # Slow upstream: the second delivery reaches a free worker thread while the first still runs.
    sim.configure(models={upstream_model: {"latency_ms": UPSTREAM_LATENCY_MS}})
    worker_process(threads=4)
    job = await submit(api_client, "only once, please")
    enqueue_duplicate(broker, job["id"], f"{job['id']}-again")

    await asyncio.to_thread(wait_until_acked, broker, [job["id"], f"{job['id']}-again"])
    done = (await api_client.get(f"/v1/jobs/{job['id']}", params={"wait": 10})).json()

    assert done["status"] == "succeeded"
    assert done["result"]["choices"][0]["message"]["content"] == "echo: only once, please"
    assert done["attempts"] == 1
    assert sim_calls(sim, upstream_model) == 1
    assert sim.stats()["models"][upstream_model]["requests"] == 1


@sqlite_only
async def test_duplicate_delivered_after_the_job_finished_changes_nothing(
    api_client: httpx.AsyncClient,
    broker: RedisBroker,
    worker_process: Callable[..., ServiceProcess],
    sim: SimHandle,
    upstream_model: str,
) -> None:
    worker_process(threads=2)
    job = await submit(api_client, "done is done")
    finished = (await api_client.get(f"/v1/jobs/{job['id']}", params={"wait": 15})).json()
    assert finished["status"] == "succeeded"

    enqueue_duplicate(broker, job["id"], f"{job['id']}-late")
    await asyncio.to_thread(wait_until_acked, broker, [f"{job['id']}-late"])

    assert (await api_client.get(f"/v1/jobs/{job['id']}")).json() == finished
    assert finished["attempts"] == 1
    assert sim_calls(sim, upstream_model) == 1


@sqlite_only
async def test_job_dispatched_twice_under_its_own_id_makes_one_upstream_call(
    api_client: httpx.AsyncClient,
    broker: RedisBroker,
    worker_process: Callable[..., ServiceProcess],
    sim: SimHandle,
    upstream_model: str,
) -> None:
    # The sweeper re-dispatching a job the API already dispatched: same message id, twice.
    sim.configure(models={upstream_model: {"latency_ms": UPSTREAM_LATENCY_MS}})
    job = await submit(api_client, "dispatched twice")
    queue.dispatch_jobs(broker, [(job["id"], queue.INTERACTIVE)])
    worker_process(threads=4)

    await asyncio.to_thread(wait_until_acked, broker, [job["id"]])
    done = (await api_client.get(f"/v1/jobs/{job['id']}", params={"wait": 10})).json()

    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert sim_calls(sim, upstream_model) == 1
