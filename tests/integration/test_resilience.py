"""The executor's resilience decisions, one job at a time, on real Redis, SQLite and the sim.

Each job is submitted through the API in this process and run by the real `JobExecutor`
(`inline_worker`), so a test decides when it runs and reads the outcome, the job object and
its attempt log. The alias `fast` has two targets, each on a provider of its own, both served
by the simulated upstream under model names unique to the test; faults are per-model sim knobs.
Nothing sleeps: the inline waits (tenacity backoff, limiter waits, a SQL write's retry after a
lost connection) are recorded by a fake `sleep` instead of being slept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.config import BreakerConfig
from core.ratelimit import wait
from core.ratelimit.limiter import RateLimiter, provider_bucket
from core.redis.breaker import CircuitBreaker
from core.redis.keys import Keys
from core.services.execute import Outcome
from core.settings import Settings
from core.store.db import make_sync_engine
from core.store.models import Job, JobAttempt
from tests.conftest import InlineWorker
from tests.sim_process import SimHandle

TPM = 60_000  # 1,000 tokens/s: plenty for one small job, easy to book out for a minute


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def primary(upstream_model: str) -> str:
    return f"{upstream_model}-primary"


@pytest.fixture
def fallback(upstream_model: str) -> str:
    return f"{upstream_model}-fallback"


@pytest.fixture
def config_path(tmp_path: Path, sim: SimHandle, primary: str, fallback: str) -> Iterator[Path]:
    """`fast` → primary/<primary> then backup/<fallback>; cache on by default."""
    config = {
        "providers": {
            "primary": {
                "kind": "openai",
                "base_url": sim.openai_base_url,
                "timeout_s": 10,
                "tpm": TPM,
                "free": True,
            },
            "backup": {
                "kind": "openai",
                "base_url": sim.openai_base_url,
                "timeout_s": 10,
                "tpm": TPM,
                "free": True,
            },
        },
        "models": {
            "fast": {
                "targets": [
                    {"provider": "primary", "model": primary},
                    {"provider": "backup", "model": fallback},
                ]
            }
        },
        "cache": {"default": True, "ttl_s": 60},
    }
    path = tmp_path / "jobgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    yield path
    sim.configure(models={primary: None, fallback: None})


@pytest.fixture
def paced(inline_worker: InlineWorker) -> list[float]:
    """The waits for a booked rate-limit slot, recorded instead of slept."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    inline_worker.runner.caller.pace = record
    return recorded


@pytest.fixture
def sleeps(inline_worker: InlineWorker, paced: list[float]) -> list[float]:
    """The inline waits the executor asked for, recorded instead of slept."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    inline_worker.runner.caller.sleep = record
    inline_worker.runtime.sleep = recorded.append  # a SQL write's retry backoff
    return recorded


@pytest.fixture
def limiter(async_redis_client: aioredis.Redis, keys: Keys) -> RateLimiter:
    return RateLimiter(async_redis_client, keys)


@pytest.fixture
def every_target_fails(sim: SimHandle, primary: str, fallback: str, sleeps: list[float]) -> None:
    """Both targets of `fast` answer 500 to every request; inline retry waits are not slept."""
    sim.configure(models={model: {"fail_rate": 1.0, "fail_status": 500} for model in (primary, fallback)})


def requests_seen(sim: SimHandle, model: str) -> int:
    """Requests the sim received for `model`, whatever their answer."""
    counters = sim.stats()["models"].get(model)
    return int(counters["requests"]) if counters else 0


async def submit(client: httpx.AsyncClient, prompt: str, **options: Any) -> str:
    body = {"model": "fast", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16, **options}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def run(worker: InlineWorker, job_id: str) -> Outcome:
    return await asyncio.to_thread(worker.run, job_id)


async def read_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def attempt_log(worker: InlineWorker, job_id: str) -> list[tuple[str | None, str, str | None]]:
    """(provider, outcome, message) of every recorded try, in order."""
    with worker.sessions() as session:
        rows = session.execute(
            select(JobAttempt.provider, JobAttempt.outcome, JobAttempt.error_message)
            .where(JobAttempt.job_id == job_id)
            .order_by(JobAttempt.id)
        ).all()
    return [(provider, outcome, message) for provider, outcome, message in rows]


def not_before_set(worker: InlineWorker, job_id: str) -> bool:
    with worker.sessions() as session:
        return session.execute(select(Job.not_before).where(Job.id == job_id)).scalar_one() is not None


# --- Cache ----------------------------------------------------------------------------------------


async def test_identical_job_is_answered_from_cache_without_an_upstream_call(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, primary: str
) -> None:
    first = await submit(api_client, "What is the capital of France?")
    second = await submit(api_client, "What is the capital of France?")

    assert (await run(inline_worker, first)).status == "succeeded"
    assert (await run(inline_worker, second)).status == "succeeded"

    job = await read_job(api_client, second)
    assert job["cached"] is True
    assert job["result"]["choices"][0]["message"]["content"] == "echo: What is the capital of France?"
    assert requests_seen(sim, primary) == 1


async def test_job_with_cache_false_calls_upstream_even_when_an_answer_is_cached(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, primary: str
) -> None:
    warm = await submit(api_client, "Tell me a fact.")
    assert (await run(inline_worker, warm)).status == "succeeded"

    fresh = await submit(api_client, "Tell me a fact.", cache=False)
    assert (await run(inline_worker, fresh)).status == "succeeded"

    job = await read_job(api_client, fresh)
    assert job["cached"] is False
    assert job["served_by"] == {"provider": "primary", "model": primary}
    assert requests_seen(sim, primary) == 2


# --- Errors and fallback --------------------------------------------------------------------------


async def test_bad_request_fails_at_once_without_retry_or_fallback(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, primary: str, fallback: str
) -> None:
    sim.configure(models={primary: {"fail_rate": 1.0, "fail_status": 400}})
    job_id = await submit(api_client, "Malformed, says the provider.")

    outcome = await run(inline_worker, job_id)

    assert outcome.status == "failed"
    job = await read_job(api_client, job_id)
    assert job["error"]["type"] == "bad_request"
    assert job["attempts"] == 1
    assert requests_seen(sim, primary) == 1
    assert requests_seen(sim, fallback) == 0
    assert [outcome for _, outcome, _ in attempt_log(inline_worker, job_id)] == ["bad_request"]


async def test_server_errors_on_the_primary_fall_back_to_the_next_target(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    primary: str,
    fallback: str,
    sleeps: list[float],
) -> None:
    sim.configure(models={primary: {"fail_rate": 1.0, "fail_status": 500}})
    job_id = await submit(api_client, "Served by the backup.")

    assert (await run(inline_worker, job_id)).status == "succeeded"

    job = await read_job(api_client, job_id)
    assert job["served_by"] == {"provider": "backup", "model": fallback}
    assert job["attempts"] == 1
    # The primary is tried twice (one backoff between), then the fallback answers.
    assert requests_seen(sim, primary) == 2
    assert len(sleeps) == 1
    assert [(p, o) for p, o, _ in attempt_log(inline_worker, job_id)] == [
        ("primary", "server_error"),
        ("primary", "server_error"),
        ("backup", "succeeded"),
    ]


async def test_open_breaker_skips_the_primary_without_calling_it(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    async_redis_client: aioredis.Redis,
    keys: Keys,
    sim: SimHandle,
    primary: str,
    fallback: str,
) -> None:
    breaker = CircuitBreaker(async_redis_client, keys)
    for _ in range(BreakerConfig().failures):
        await breaker.record_failure(f"primary/{primary}", BreakerConfig(), probe=False)
    job_id = await submit(api_client, "The breaker is open.")

    assert (await run(inline_worker, job_id)).status == "succeeded"

    job = await read_job(api_client, job_id)
    assert job["served_by"] == {"provider": "backup", "model": fallback}
    assert requests_seen(sim, primary) == 0
    assert [(p, o) for p, o, _ in attempt_log(inline_worker, job_id)] == [
        ("primary", "breaker_open"),
        ("backup", "succeeded"),
    ]


async def test_every_target_failing_spends_an_attempt_each_time_then_fails(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    primary: str,
    fallback: str,
    every_target_fails: None,
) -> None:
    job_id = await submit(api_client, "Nobody can answer.")
    base_delay_s = inline_worker.runner.policy.retry_delay_s

    first = await run(inline_worker, job_id)

    assert first == Outcome("requeued", delay_s=base_delay_s)
    job = await read_job(api_client, job_id)
    assert (job["status"], job["attempts"]) == ("queued", 1)
    # Not due before its delay: a message arriving early claims nothing and calls nobody.
    assert (await run(inline_worker, job_id)).status == "requeued"
    assert requests_seen(sim, primary) == requests_seen(sim, fallback) == 2

    make_due(inline_worker, job_id)
    assert await run(inline_worker, job_id) == Outcome("requeued", delay_s=2 * base_delay_s)
    make_due(inline_worker, job_id)
    assert (await run(inline_worker, job_id)).status == "failed"

    job = await read_job(api_client, job_id)
    assert job["attempts"] == 3
    assert job["error"]["type"] == "server_error"
    # The fifth failure opened each breaker, so the last retries were refused, not sent; the
    # failures still count: a breaker the job's own failure opened is no reason to refund it.
    assert requests_seen(sim, primary) == requests_seen(sim, fallback) == 5
    assert [(p, o) for p, o, _ in attempt_log(inline_worker, job_id)][-4:] == [
        ("primary", "server_error"),
        ("primary", "breaker_open"),
        ("backup", "server_error"),
        ("backup", "breaker_open"),
    ]


def make_due(worker: InlineWorker, job_id: str) -> None:
    """Let a requeued job's delay pass without waiting for it."""
    with worker.sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(not_before=None))
        session.commit()


# --- Rate limits and pauses -----------------------------------------------------------------------


async def test_job_whose_every_target_is_rate_limited_is_requeued_without_spending_an_attempt(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    limiter: RateLimiter,
    sim: SimHandle,
    primary: str,
    fallback: str,
) -> None:
    # Book both providers' token budgets a minute ahead (a big request leaves its bucket in debt).
    for provider in ("primary", "backup"):
        booked = await limiter.reserve([provider_bucket(provider, rpm=None, tpm=TPM)], TPM, max_wait_s=0)
        assert booked.granted
    job_id = await submit(api_client, "Everyone is busy.", priority="batch")

    outcome = await run(inline_worker, job_id)

    assert outcome.status == "requeued"
    # The wait the limiter asked for, plus up to half a second of jitter.
    assert outcome.delay_s is not None and 30 < outcome.delay_s <= 60 + 0.5
    job = await read_job(api_client, job_id)
    assert job["status"] == "queued"
    assert job["attempts"] == 0
    assert not_before_set(inline_worker, job_id)
    assert requests_seen(sim, primary) == requests_seen(sim, fallback) == 0
    assert [(p, o) for p, o, _ in attempt_log(inline_worker, job_id)] == [
        ("primary", "rate_limit_wait"),
        ("backup", "rate_limit_wait"),
    ]


async def test_interactive_job_waits_inline_for_budget_a_batch_job_would_requeue_for(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    limiter: RateLimiter,
    sim: SimHandle,
    primary: str,
    sleeps: list[float],
    paced: list[float],
) -> None:
    # Two seconds of the primary's tokens booked: beyond a batch job's wait, within an interactive one's.
    await limiter.reserve([provider_bucket("primary", rpm=None, tpm=TPM)], 2 * TPM // 60, max_wait_s=0)
    await limiter.reserve([provider_bucket("backup", rpm=None, tpm=TPM)], 2 * TPM // 60, max_wait_s=0)
    batch_job = await submit(api_client, "Batch, no hurry.", priority="batch")
    interactive_job = await submit(api_client, "Interactive, now please.", priority="interactive")

    assert (await run(inline_worker, batch_job)).status == "requeued"
    assert (await run(inline_worker, interactive_job)).status == "succeeded"

    assert sleeps == [] and len(paced) == 1 and 1.0 < paced[0] <= 2.0
    assert requests_seen(sim, primary) == 1


async def test_a_slot_woken_up_to_too_late_is_not_called_through_and_the_fallback_serves(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    limiter: RateLimiter,
    sim: SimHandle,
    primary: str,
    fallback: str,
) -> None:
    """A loop busy with many jobs starting wakes a sleeper late: its slot has passed, and sent
    now the call would land together with the calls booked after it."""
    clock = [1_000.0]

    async def oversleep(seconds: float) -> None:
        clock[0] += seconds + 2 * wait.MISSED_SLOT_S

    inline_worker.runner.caller.pace = oversleep
    inline_worker.runner.caller.monotonic = lambda: clock[0]
    # Two seconds of the primary's tokens booked: an interactive job books behind them and sleeps.
    await limiter.reserve([provider_bucket("primary", rpm=None, tpm=TPM)], 2 * TPM // 60, max_wait_s=0)
    job_id = await submit(api_client, "Late for my slot.", priority="interactive")

    assert (await run(inline_worker, job_id)).status == "succeeded"

    job = await read_job(api_client, job_id)
    assert job["served_by"] == {"provider": "backup", "model": fallback}
    assert requests_seen(sim, primary) == 0
    assert attempt_log(inline_worker, job_id)[0] == ("primary", "rate_limit_wait", "slot missed")


async def test_retry_after_on_a_429_pauses_the_provider_and_requeues_the_job_for_the_pause(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    limiter: RateLimiter,
    sim: SimHandle,
    primary: str,
    fallback: str,
    sleeps: list[float],
) -> None:
    sim.configure(
        models={
            primary: {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": 30},
            fallback: {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": 30},
        }
    )
    job_id = await submit(api_client, "Slow down.", priority="batch")

    outcome = await run(inline_worker, job_id)

    assert outcome.status == "requeued"
    assert outcome.delay_s is not None and 25 < outcome.delay_s <= 30 + 0.5  # the pause, plus jitter
    assert await limiter.paused_until("primary") is not None
    assert await limiter.paused_until("backup") is not None
    # One call each: the retry finds the provider paused instead of calling it again.
    assert requests_seen(sim, primary) == requests_seen(sim, fallback) == 1
    job = await read_job(api_client, job_id)
    assert job["attempts"] == 0, "waiting out a rate limit must not use up an attempt"


async def test_paused_provider_is_not_called_and_its_fallback_serves(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    limiter: RateLimiter,
    sim: SimHandle,
    primary: str,
    fallback: str,
) -> None:
    await limiter.pause("primary", 30)
    job_id = await submit(api_client, "The primary is paused.")

    assert (await run(inline_worker, job_id)).status == "succeeded"

    job = await read_job(api_client, job_id)
    assert job["served_by"] == {"provider": "backup", "model": fallback}
    assert requests_seen(sim, primary) == 0
    assert attempt_log(inline_worker, job_id)[0] == ("primary", "rate_limit_wait", "provider paused")


# --- A COMMIT that landed but whose answer was lost -----------------------------------------------


def lose_one_commit_answer(worker: InlineWorker) -> list[str]:
    """The executor's next commit carrying attempt rows (a final or requeue write) reaches the
    database, then raises as if the connection dropped before the server's answer came back:
    the one fault a retried write cannot tell from a commit that never happened. Cannot be
    timed for real here (a proxy cannot drop the socket between COMMIT and its reply), so the
    session raises it. Returns the list the fault appends to when it fires."""
    fired: list[str] = []

    def mark_attempts(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO JOB_ATTEMPTS"):
            conn.info["carries_attempts"] = True

    event.listen(worker.engine, "before_cursor_execute", mark_attempts)

    class AnswerLost(Session):
        def commit(self) -> None:
            carries = self.connection().info.pop("carries_attempts", False)
            super().commit()
            if carries and not fired:
                fired.append("commit answer lost")
                reset = ConnectionResetError("server closed the connection unexpectedly")
                raise OperationalError("COMMIT", None, reset)

    worker.runtime.sessions = sessionmaker(worker.engine, class_=AnswerLost, expire_on_commit=False)
    return fired


async def test_claim_that_finds_its_connection_gone_is_tried_again_not_left_to_the_sweeper(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    primary: str,
    sleeps: list[float],
) -> None:
    # The pool does not ping connections before handing them out: a claim is the first to meet
    # one the server closed, and must not drop its jobs for the sweeper to find 30-60 s later.
    job_id = await submit(api_client, "Claimed on the second try.", cache=False)
    lost: list[str] = []

    def close_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not lost:
            lost.append("connection gone")
            raise OperationalError("UPDATE jobs", None, ConnectionResetError("server closed the connection"))

    event.listen(inline_worker.engine, "before_cursor_execute", close_once)

    outcome = await run(inline_worker, job_id)

    assert lost and len(sleeps) == 1  # one backoff, then the claim again
    assert outcome.status == "succeeded"
    job = await read_job(api_client, job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert requests_seen(sim, primary) == 1


async def test_final_write_whose_commit_landed_before_the_connection_dropped_is_kept_once(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    primary: str,
    sleeps: list[float],
) -> None:
    job_id = await submit(api_client, "Answer once.", cache=False)
    fired = lose_one_commit_answer(inline_worker)

    outcome = await run(inline_worker, job_id)

    assert fired and len(sleeps) == 1  # one backoff, then the retry
    # The retry sees its own write instead of reporting the claim lost and logging the call twice.
    assert outcome.status == "succeeded"
    job = await read_job(api_client, job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert attempt_log(inline_worker, job_id) == [("primary", "succeeded", None)]
    assert requests_seen(sim, primary) == 1


async def test_requeue_whose_commit_landed_before_the_connection_dropped_is_kept_once(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    every_target_fails: None,
    primary: str,
    fallback: str,
) -> None:
    job_id = await submit(api_client, "Nobody can answer yet.")
    fired = lose_one_commit_answer(inline_worker)

    outcome = await run(inline_worker, job_id)

    assert fired
    assert outcome == Outcome("requeued", delay_s=inline_worker.runner.policy.retry_delay_s)
    job = await read_job(api_client, job_id)
    assert (job["status"], job["attempts"]) == ("queued", 1)
    # One row per call the sim saw (each target tried twice inline), not each row twice.
    calls = requests_seen(sim, primary) + requests_seen(sim, fallback)
    assert (
        [o for _, o, _ in attempt_log(inline_worker, job_id)]
        == ["server_error"] * calls
        == ["server_error"] * 4
    )


# --- Client-side bounds on the workers' Postgres connections -------------------------------------


def test_worker_connections_to_postgres_bound_a_dropped_network_on_the_client_side(postgres_url: str) -> None:
    engine = make_sync_engine(Settings(database_url=postgres_url))
    try:
        with engine.connect() as connection:
            parameters = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
    finally:
        engine.dispose()

    assert parameters["tcp_user_timeout"] == "35000"
    assert (parameters["keepalives"], parameters["keepalives_idle"]) == ("1", "30")
    assert "statement_timeout=30000" in parameters["options"]
