"""What a client sees when a piece of the deployment dies, with real processes.

- The API process dies between committing a job and enqueueing it (the test-only fault hook
  `JOBGATE_FAULT_EXIT_AFTER_COMMIT`): the job is in SQL but Redis never heard of it; a
  worker's sweeper dispatches it and it runs once.
- Postgres is unreachable (the API talks to it through a TCP proxy the test stops, or
  freezes as a network partition would): every request that needs SQL answers 503 with
  Retry-After within a bound, `/readyz` names the database, and service resumes by itself
  once the proxy is back.
- Postgres goes away while a worker's upstream call is in flight: the answer is written
  once it is back (the write is retried), the job succeeds on its first attempt, one call.
- Redis is unreachable (the test's own redis-server, crashed): a submission is still
  accepted (202, committed to SQL), `/readyz` names Redis, and once Redis is back the
  sweeper dispatches the job and it runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from core.settings import Settings
from jobgate.children import free_port
from tests.conftest import process_env, sim_calls
from tests.fleet import run_fleet, sim_provider
from tests.pg_proxy import TcpProxy, tcp_proxy
from tests.processes import ServiceProcess, python_module, wait_until
from tests.redis_server import RedisServer, own_redis
from tests.sim_process import SimHandle

pytestmark = pytest.mark.e2e

# Short enough that recovery takes seconds, as a test can afford.
FAST_SWEEP = {"sweep_interval_s": "0.5", "redispatch_after_s": "1", "lease_s": "5"}
# Every request that needs an unreachable dependency must answer within this.
ANSWER_BOUND_S = 10.0


def sim_config(sim: SimHandle, model: str) -> dict[str, Any]:
    return {
        "providers": {"sim": sim_provider(sim)},
        "models": {"fast": {"targets": [{"provider": "sim", "model": model}]}},
        "cache": {"default": False, "ttl_s": 60},
    }


def job_body(text: str = "Hello") -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": text}]}


def sql_jobs(database_url: str) -> list[dict[str, Any]]:
    """Every job row, read from SQL directly (the API may be dead)."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute("SELECT id, status, attempts, result FROM jobs ORDER BY id").fetchall()
    return [{"id": r[0], "status": r[1], "attempts": r[2], "result": r[3]} for r in rows]


def wait_for_status(database_url: str, job_id: str, status: str, *, timeout_s: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal found
        found = next(job for job in sql_jobs(database_url) if job["id"] == job_id)
        return bool(found["status"] == status)

    try:
        wait_until(reached, timeout_s=timeout_s, interval_s=0.1, what=f"job {job_id} to be {status}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last seen: {found}") from None
    return found


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


# --- The API dies between commit and enqueue ----------------------------------------------------


def test_job_committed_by_an_api_that_died_before_enqueueing_is_dispatched_by_the_sweeper(
    sim: SimHandle, upstream_model: str, tmp_path: Path
) -> None:
    with run_fleet(
        sim=sim,
        config=sim_config(sim, upstream_model),
        workers=1,
        threads=2,
        settings=FAST_SWEEP,
        # An API that dies cannot remove a temporary metrics folder of its own: give it this one.
        api_settings={"fault_exit_after_commit": "true", "metrics_dir": str(tmp_path / "api-metrics")},
    ) as fleet:
        with pytest.raises(httpx.TransportError):
            fleet.http.post("/v1/jobs", json=job_body("committed, never enqueued"))

        assert fleet.api.process.wait(timeout=10) == 137
        [job] = sql_jobs(fleet.database_url)
        done = wait_for_status(fleet.database_url, job["id"], "succeeded", timeout_s=30)

    assert done["attempts"] == 1
    assert done["result"]["choices"][0]["message"]["content"].endswith("committed, never enqueued")
    assert sim_calls(sim, upstream_model) == 1


# --- Postgres unreachable -----------------------------------------------------------------------


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    port = psycopg.conninfo.conninfo_to_dict(postgres_url).get("port") or 5432
    with tcp_proxy(int(port)) as proxy:
        yield proxy


@pytest.fixture
def api_through_proxy(settings: Settings, postgres_proxy: TcpProxy, api_key: str) -> Iterator[httpx.Client]:
    """`python -m jobgate api` whose every SQL connection goes through `postgres_proxy`."""
    proxied = settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{postgres_proxy.port}")
    assert proxied != settings.database_url
    env = process_env(settings.model_copy(update={"database_url": proxied}))
    port = free_port()
    api = ServiceProcess.start(
        "api", python_module("jobgate", "api", "--host", "127.0.0.1", "--port", str(port)), env
    )
    try:
        api.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=60)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=ANSWER_BOUND_S * 3,
        ) as client:
            yield client
    finally:
        api.stop()


def test_api_answers_503_with_retry_after_while_postgres_is_unreachable_and_recovers(
    api_through_proxy: httpx.Client, postgres_proxy: TcpProxy
) -> None:
    client = api_through_proxy
    assert client.post("/v1/jobs", json=job_body("before")).status_code == 202

    postgres_proxy.stop()
    ready, ready_s = timed(lambda: client.get("/readyz"))
    submitted, submit_s = timed(lambda: client.post("/v1/jobs", json=job_body("during")))
    listed, list_s = timed(lambda: client.get("/v1/jobs"))

    assert ready.status_code == 503
    assert "database" in ready.json()["error"]["message"]
    assert "redis" not in ready.json()["error"]["message"]
    for response in (ready, submitted, listed):
        assert int(response.headers["retry-after"]) > 0
    for response in (submitted, listed):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "service_unavailable"
        assert "database" in response.json()["error"]["message"]
    assert max(ready_s, submit_s, list_s) < ANSWER_BOUND_S, (ready_s, submit_s, list_s)

    postgres_proxy.start()
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=20, what="/readyz to recover")
    assert client.post("/v1/jobs", json=job_body("after")).status_code == 202
    contents = [job["id"] for job in client.get("/v1/jobs").json()["data"]]
    assert len(contents) == 2, "the submission refused with 503 must not have been stored"


def test_api_answers_503_within_bounds_while_postgres_is_partitioned_and_recovers(
    api_through_proxy: httpx.Client, postgres_proxy: TcpProxy
) -> None:
    client = api_through_proxy
    assert client.post("/v1/jobs", json=job_body("before")).status_code == 202

    postgres_proxy.freeze()  # connections stay open, nothing answers
    ready, ready_s = timed(lambda: client.get("/readyz"))
    submitted, submit_s = timed(lambda: client.post("/v1/jobs", json=job_body("during")))
    postgres_proxy.thaw()

    assert ready.status_code == 503 and "database" in ready.json()["error"]["message"]
    assert submitted.status_code == 503, submitted.text
    assert int(submitted.headers["retry-after"]) > 0
    assert max(ready_s, submit_s) < ANSWER_BOUND_S, (ready_s, submit_s)
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=20, what="/readyz to recover")
    assert len(client.get("/v1/jobs").json()["data"]) == 1


def test_answer_that_arrives_while_postgres_is_unreachable_is_written_once_it_returns(
    sim: SimHandle, upstream_model: str
) -> None:
    """The upstream call is paid for: its result waits for the database instead of being lost
    (which would expire the lease and run, and pay for, the job again)."""
    sim.configure(models={upstream_model: {"latency_ms": 1500}})
    with (
        tcp_proxy(5432) as proxy,
        run_fleet(
            sim=sim, config=sim_config(sim, upstream_model), workers=0, threads=2, settings=FAST_SWEEP
        ) as fleet,
    ):
        proxied = fleet.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        assert proxied != fleet.database_url
        worker = ServiceProcess.start(
            "worker", list(fleet.worker_argv), {**fleet.worker_env, "JOBGATE_DATABASE_URL": proxied}
        )
        fleet.workers.append(worker)
        worker.wait_for_line("worker ready", timeout_s=60)
        job = fleet.submit_job(job_body("answered while the database is away"))
        wait_for_status(fleet.database_url, job["id"], "running", timeout_s=20)

        proxy.stop()  # the call is in flight; its answer comes back to a database that is gone
        wait_until(
            lambda: bool(worker.log_records("sql_write_retry") or worker.log_records("run_job_crashed")),
            timeout_s=20,
            what="the worker's final write to meet the unreachable database",
        )
        proxy.start()
        done = wait_for_status(fleet.database_url, job["id"], "succeeded", timeout_s=30)

    assert done["attempts"] == 1
    assert done["result"]["choices"][0]["message"]["content"].endswith("answered while the database is away")
    assert sim_calls(sim, upstream_model) == 1


# --- Redis unreachable --------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis(tmp_path / "redis") as server:
        yield server


def test_job_submitted_while_redis_is_down_is_accepted_and_runs_once_redis_is_back(
    sim: SimHandle, upstream_model: str, redis_server: RedisServer
) -> None:
    with run_fleet(
        sim=sim,
        config=sim_config(sim, upstream_model),
        workers=1,
        threads=2,
        redis_url=redis_server.url,
        settings={**FAST_SWEEP, "redis_timeout_s": "2"},
    ) as fleet:
        redis_server.crash()
        text = f"while redis is down {uuid.uuid4().hex[:6]}"
        accepted, accept_s = timed(lambda: fleet.http.post("/v1/jobs", json=job_body(text)))
        ready, ready_s = timed(lambda: fleet.http.get("/readyz"))
        read_back = fleet.http.get(f"/v1/jobs/{accepted.json()['id']}")

        assert accepted.status_code == 202, accepted.text
        assert accept_s < ANSWER_BOUND_S
        assert read_back.json()["status"] == "queued"
        assert ready.status_code == 503 and ready_s < ANSWER_BOUND_S
        assert "redis" in ready.json()["error"]["message"]
        assert "database" not in ready.json()["error"]["message"]

        redis_server.start()
        job = fleet.wait_for_job(accepted.json()["id"], timeout_s=40)

    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert sim_calls(sim, upstream_model) == 1
