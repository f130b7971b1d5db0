"""A whole jobgate deployment on this machine, for end-to-end tests and benchmarks.

`run_fleet(sim=..., config=..., workers=3, threads=8)` writes the providers/models YAML,
creates and migrates a fresh Postgres database (`jobgate_test_<hex>`, dropped afterwards),
starts the API (`python -m jobgate api`) and N worker processes (`python -m workers`), all
sharing one Redis key prefix, creates a tenant key, and yields a `Fleet` that submits work
through the real HTTP API and reads it back. Every process it started is stopped by pid and
the prefix's Redis keys are deleted, however the block ends.

Also the arithmetic of the simulated upstream's token rule (`prompt_tokens`,
`completion_tokens`), so a test can give each job `max_tokens` equal to its real answer size:
then the sim charges exactly what jobgate's limiter books, and utilisation figures are exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import redis
import yaml

from core.auth import Scope, create_key
from core.settings import Settings
from core.store.db import make_sync_engine, make_sync_sessions
from tests.databases import database_supply, database_url
from tests.processes import ServiceProcess, jobgate_env, python_module, stop_all, wait_until
from tests.sim_process import SimHandle

REDIS_URL = os.environ.get("JOBGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get("JOBGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ECHO_PREFIX = "echo: "


# --- The sim's token rule (sim/__init__.py), mirrored by core/ratelimit/estimate.py ---------------


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def prompt_tokens(prompt: str) -> int:
    """Tokens of a one-message prompt: 4 per message plus one per 4 characters."""
    return 4 + text_tokens(prompt)


def completion_tokens(prompt: str) -> int:
    """Tokens of the sim's answer to `prompt` ("echo: <prompt>")."""
    return text_tokens(ECHO_PREFIX + prompt)


def job_cost_tokens(prompt: str) -> int:
    """What one call costs in the sim's token bucket when `max_tokens` = the answer's size."""
    return prompt_tokens(prompt) + completion_tokens(prompt)


def chat_body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A job body whose `max_tokens` is exactly the size of the sim's answer."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": completion_tokens(prompt),
        **extra,
    }


def answer_text(job_or_line: dict[str, Any]) -> str | None:
    """The assistant text of a job object's (or a results line's) `result`."""
    result = job_or_line.get("result")
    if not result:
        return None
    content = result["choices"][0]["message"]["content"]
    return str(content) if content is not None else None


# --- Infrastructure: a fresh database, a free port ----------------------------------------------


@contextmanager
def fresh_postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A new, migrated Postgres database `jobgate_test_<hex>` (a copy of a migrated template,
    made ahead by `tests/databases.py`); dropped (with FORCE) afterwards."""
    supply = database_supply(admin_url)
    name = supply.take()
    try:
        yield database_url(admin_url, name)
    finally:
        supply.give_back(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def sim_provider(sim: SimHandle, **options: Any) -> dict[str, Any]:
    """A provider entry of the config that points at the sim (OpenAI wire format)."""
    return {"kind": "openai", "base_url": sim.openai_base_url, "timeout_s": 10, "free": True, **options}


# --- The fleet ----------------------------------------------------------------------------------


@dataclass
class Fleet:
    """A running deployment: the API, the workers, and what they share."""

    sim: SimHandle
    api_url: str
    api_key: str
    database_url: str
    redis_url: str
    redis_prefix: str
    config_path: Path
    api: ServiceProcess
    workers: list[ServiceProcess] = field(default_factory=list)
    # How `start_worker` starts one more worker like the first ones (chaos tests replace the dead).
    worker_argv: list[str] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)
    # An operator key: /v1/admin/... and /v1/providers.
    operator_key: str = ""
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60
        )

    def close(self) -> None:
        self.http.close()

    @contextmanager
    def as_tenant(self, tenant: str) -> Iterator[Fleet]:
        """This fleet through a new key of `tenant` (created if new): the tests of a module
        sharing one fleet keep their jobs, batches, usage and deliveries apart by tenant."""
        view = dataclasses.replace(self, api_key=_create_key(self.database_url, tenant))
        try:
            yield view
        finally:
            view.close()

    def start_worker(self, *, wait_ready: bool = True, timeout_s: float = 60.0) -> ServiceProcess:
        """One more worker process like the fleet's first ones; stopped with the fleet."""
        worker = ServiceProcess.start("worker", list(self.worker_argv), self.worker_env)
        self.workers.append(worker)
        if wait_ready:
            worker.wait_for_line("worker ready", timeout_s=timeout_s)
        return worker

    def _json(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise AssertionError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response.json()

    # Jobs

    def submit_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs; the job object."""
        job: dict[str, Any] = self._json(self.http.post("/v1/jobs", json=body))
        return job

    def job(self, job_id: str, *, wait_s: float = 0) -> dict[str, Any]:
        """GET /v1/jobs/{id}[?wait=]."""
        params = {"wait": wait_s} if wait_s else None
        job: dict[str, Any] = self._json(
            self.http.get(f"/v1/jobs/{job_id}", params=params, timeout=wait_s + 30)
        )
        return job

    def wait_for_job(self, job_id: str, *, timeout_s: float) -> dict[str, Any]:
        """Long-poll the job until it is final; fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            job = self.job(job_id, wait_s=max(min(remaining, 60), 0.1))
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} not final after {timeout_s} s: {job}")

    # Batches

    def submit_batch(self, bodies: dict[str, dict[str, Any]], *, priority: str = "batch") -> str:
        """POST /v1/batches with `{custom_id: body}`; returns the batch id."""
        requests = [{"custom_id": custom_id, "body": body} for custom_id, body in bodies.items()]
        batch = self._json(self.http.post("/v1/batches", json={"requests": requests, "priority": priority}))
        return str(batch["id"])

    def batch(self, batch_id: str) -> dict[str, Any]:
        batch: dict[str, Any] = self._json(self.http.get(f"/v1/batches/{batch_id}"))
        return batch

    def wait_for_batch(self, batch_id: str, *, timeout_s: float, interval_s: float = 0.2) -> dict[str, Any]:
        """Poll the batch until every job is final; fails (naming its counts) after `timeout_s`."""
        last: dict[str, Any] = {}

        def finished() -> bool:
            nonlocal last
            last = self.batch(batch_id)
            counts = last["counts"]
            return bool(counts["queued"] + counts["running"] == 0)

        try:
            wait_until(finished, timeout_s=timeout_s, interval_s=interval_s, what=f"batch {batch_id}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last counts: {last.get('counts')}") from None
        return last

    def batch_results(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """GET /v1/batches/{id}/results, keyed by custom_id."""
        response = self.http.get(f"/v1/batches/{batch_id}/results")
        if response.is_error:
            raise AssertionError(f"{response.request.url}: {response.status_code} {response.text}")
        lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return {line["custom_id"]: line for line in lines}

    def batch_jobs(self, batch_id: str) -> list[dict[str, Any]]:
        """Every job object of the batch (GET /v1/jobs?batch_id=, all pages)."""
        jobs: list[dict[str, Any]] = []
        params: dict[str, Any] = {"batch_id": batch_id, "limit": 100}
        while True:
            page = self._json(self.http.get("/v1/jobs", params=params))
            jobs += page["data"]
            if not page["has_more"]:
                return jobs
            params["after"] = page["last_id"]

    # Fleet-wide state in Redis (read-only views for assertions)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def workers_alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)


def _process_env(
    *,
    database_url: str,
    redis_prefix: str,
    config_path: Path,
    redis_url: str,
    pool_size: int,
    settings: dict[str, str] | None = None,
) -> dict[str, str]:
    values: dict[str, str | None] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "config": str(config_path),
        "log_level": "WARNING",
        # Postgres allows 100 connections in all: a pool per process sized to its threads.
        "db_pool_size": str(pool_size),
        "db_max_overflow": "4",
    }
    values.update(settings or {})  # a test's own settings win (e.g. log_level)
    return jobgate_env(**values)


@contextmanager
def run_fleet(
    *,
    sim: SimHandle,
    config: dict[str, Any],
    workers: int = 3,
    threads: int = 8,
    max_in_flight: int | None = None,
    redis_url: str = REDIS_URL,
    postgres_admin_url: str = POSTGRES_ADMIN_URL,
    startup_timeout_s: float = 60.0,
    settings: dict[str, str] | None = None,
    api_settings: dict[str, str] | None = None,
) -> Iterator[Fleet]:
    """Start the API and `workers` worker processes of `threads` threads on a fresh database.

    `settings` are more `JOBGATE_*` settings for every process (`{"lease_s": "5"}`), and
    `api_settings` for the API process alone.
    """
    prefix = f"jgfleet-{uuid.uuid4().hex[:10]}"
    with ExitStack() as stack:
        stack.callback(delete_prefix, redis_url, prefix)
        tmp = Path(stack.enter_context(TemporaryDirectory(prefix="jobgate-fleet-")))
        config_path = tmp / "jobgate.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        database_url = stack.enter_context(fresh_postgres_database(postgres_admin_url))
        api_key = _create_key(database_url, "fleet-tenant")
        operator_key = _create_key(database_url, None, scope="operator")

        port = free_port()
        api_env = _process_env(
            database_url=database_url,
            redis_prefix=prefix,
            config_path=config_path,
            redis_url=redis_url,
            pool_size=16,
            settings={**(settings or {}), **(api_settings or {})},
        )
        processes: list[ServiceProcess] = []
        stack.callback(_stop_all, processes)
        api = ServiceProcess.start(
            "api", python_module("jobgate", "api", "--host", "127.0.0.1", "--port", str(port)), api_env
        )
        processes.append(api)
        worker_env = _process_env(
            database_url=database_url,
            redis_prefix=prefix,
            config_path=config_path,
            redis_url=redis_url,
            pool_size=threads + 2,
            settings=settings,
        )
        worker_argv = python_module("workers", "--threads", str(threads), "--grace-s", "3")
        if max_in_flight is not None:
            worker_argv += ["--max-in-flight", str(max_in_flight)]
        started: list[ServiceProcess] = []
        for _ in range(workers):
            worker = ServiceProcess.start("worker", list(worker_argv), worker_env)
            processes.append(worker)
            started.append(worker)
        api_url = f"http://127.0.0.1:{port}"
        api.wait_for_http(f"{api_url}/healthz", timeout_s=startup_timeout_s)
        for worker in started:
            worker.wait_for_line("worker ready", timeout_s=startup_timeout_s)
        fleet = Fleet(
            sim=sim,
            api_url=api_url,
            api_key=api_key,
            operator_key=operator_key,
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix=prefix,
            config_path=config_path,
            api=api,
            workers=started,
            worker_argv=worker_argv,
            worker_env=worker_env,
        )
        # Workers started later by `fleet.start_worker()` are stopped too (before the rest).
        stack.callback(_stop_all, fleet.workers)
        stack.callback(fleet.close)
        yield fleet


def _stop_all(processes: list[ServiceProcess]) -> None:
    """SIGTERM every process first, so they shut down in parallel; then wait for (or kill) each."""
    stop_all(processes)


def _create_key(database_url: str, tenant: str | None, *, scope: Scope = "tenant") -> str:
    engine = make_sync_engine(Settings(database_url=database_url))
    try:
        with make_sync_sessions(engine)() as session:
            return create_key(session, tenant, scope=scope).key
    finally:
        engine.dispose()


# --- Reading the sim's record -------------------------------------------------------------------


@dataclass(frozen=True)
class TokenUse:
    """How much of a token budget the sim saw used between its first and last answered call."""

    calls: int
    rate_limited: int
    tokens: int
    duration_s: float
    tpm: float

    @property
    def allowed_tokens(self) -> float:
        return self.tpm / 60 * self.duration_s

    @property
    def utilisation(self) -> float:
        return self.tokens / self.allowed_tokens if self.allowed_tokens else 0.0


def token_use(stats: dict[str, Any], *, tpm: float) -> TokenUse:
    """Utilisation of `tpm` over the busy period, from `GET /sim/stats` alone."""
    first, last = stats["first_call_at"], stats["last_call_at"]
    duration_s = (last - first) if first is not None and last is not None else 0.0
    return TokenUse(
        calls=int(stats["calls"]),
        rate_limited=int(stats["rate_limited"]),
        tokens=int(stats["input_tokens"]) + int(stats["output_tokens"]),
        duration_s=float(duration_s),
        tpm=tpm,
    )


def clusters(times: list[float], *, gap_s: float) -> list[list[float]]:
    """Sorted times split wherever two neighbours are more than `gap_s` apart."""
    groups: list[list[float]] = []
    for t in sorted(times):
        if groups and t - groups[-1][-1] <= gap_s:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups
