"""Metrics that add up by default: the API's `/metrics` counts what every process of its
deployment on its machine did, with no metrics setting.

The processes are started the way README shows (`jobgate api`, `jobgate worker`, a key from
`jobgate keys create`), with a fresh database and Redis prefix and no JOBGATE_METRICS_DIR: each
finds its deployment's folder from the database URL and the Redis prefix. TMPDIR points at
this test's own folder, so tests running beside it cannot disturb the folders counted here.
"""

from __future__ import annotations

import re
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from jobgate.children import free_port
from tests.fleet import chat_body
from tests.processes import ServiceProcess, jobgate_env, python_module, stop_all, wait_until

pytestmark = pytest.mark.e2e

JOBS = 60
FINISHED = re.compile(r'^jobgate_jobs_finished_total\{status="succeeded"\} ([0-9.e+]+)$', re.M)
SUBMITTED = re.compile(r'^jobgate_jobs_submitted_total\{priority="interactive"\} ([0-9.e+]+)$', re.M)


def _counter(pattern: re.Pattern[str], text: str) -> float:
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def env(
    postgres_url: str, redis_url: str, redis_prefix: str, config_path: Path, tmp_path: Path
) -> dict[str, str]:
    """What README's commands see: the database, Redis, the config; no metrics setting."""
    env = jobgate_env(
        database_url=postgres_url, redis_url=redis_url, redis_prefix=redis_prefix, config=str(config_path)
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def _metrics_folders(env: dict[str, str]) -> list[Path]:
    return list(Path(env["TMPDIR"]).glob("jobgate-metrics-*"))


def _create_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        python_module("jobgate", "keys", "create", "--tenant", "acme"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def _start_api(env: dict[str, str], port: int) -> ServiceProcess:
    api = ServiceProcess.start("api", python_module("jobgate", "api", "--port", str(port)), env)
    try:
        api.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=90)
    except BaseException:
        api.stop()
        raise
    return api


def _start_worker(env: dict[str, str]) -> ServiceProcess:
    # A few jobs in flight each, so that both workers take part.
    argv = python_module("jobgate", "worker", "--processes", "1", "--threads", "2", "--max-in-flight", "4")
    return ServiceProcess.start("worker", argv, env)


def test_an_api_and_two_workers_started_as_the_readme_shows_count_every_finished_job(
    env: dict[str, str],
) -> None:
    key = _create_key(env)
    port = free_port()
    processes: list[ServiceProcess] = []
    try:
        processes.append(_start_api(env, port))
        workers = [_start_worker(env), _start_worker(env)]
        processes += workers
        for worker in workers:
            worker.wait_for_line("worker ready", timeout_s=90)
        assert len(_metrics_folders(env)) == 1, "one folder for the whole deployment"

        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as http:
            tag = uuid.uuid4().hex[:8]
            requests = [
                {"custom_id": f"c{i}", "body": chat_body("fast", f"count me {tag} {i}")} for i in range(JOBS)
            ]
            response = http.post("/v1/batches", json={"requests": requests})
            assert response.status_code == 201, response.text
            batch_id = response.json()["id"]
            wait_until(
                lambda: http.get(f"/v1/batches/{batch_id}").json()["status"] == "completed",
                timeout_s=120,
                interval_s=0.1,
                what="the batch to complete",
            )
            assert http.get(f"/v1/batches/{batch_id}").json()["counts"]["succeeded"] == JOBS
            # A worker counts a job just after its final write: the count may trail the batch.
            wait_until(
                lambda: _counter(FINISHED, http.get("/metrics").text) >= JOBS,
                timeout_s=30,
                what="/metrics to count every finished job",
            )
            assert _counter(FINISHED, http.get("/metrics").text) == JOBS

        per_worker = [len(worker.log_records("job_finished")) for worker in workers]
        assert sum(per_worker) == JOBS
        assert min(per_worker) > 0, f"both workers finished jobs: {per_worker}"
    finally:
        stop_all(processes, grace_s=60)  # the worker pool gives its processes 30 s to finish

    assert _metrics_folders(env) == [], "the last process of the deployment removes its folder"


def test_a_deployment_started_again_clears_what_its_killed_processes_left(env: dict[str, str]) -> None:
    key = _create_key(env)
    port = free_port()
    api = _start_api(env, port)
    try:
        body = chat_body("fast", "counted by a process about to be killed")
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202, response.text
        assert _counter(SUBMITTED, httpx.get(f"http://127.0.0.1:{port}/metrics").text) == 1
    finally:
        api.process.send_signal(signal.SIGKILL)
        api.stop()
    killed = api.pid
    [folder] = _metrics_folders(env)
    assert list(folder.glob(f"*_{killed}.db")), "SIGKILL left the process's files behind"

    api = _start_api(env, port)
    try:
        assert _metrics_folders(env) == [folder]
        assert not list(folder.glob(f"*_{killed}.db"))
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert _counter(SUBMITTED, text) == 0, "the killed process's count is gone"
    finally:
        code = api.stop(grace_s=30)
    assert code in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    assert _metrics_folders(env) == []
