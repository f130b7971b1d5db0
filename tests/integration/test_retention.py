"""Retention on SQLite and Postgres: what is past its window goes, usage stays, keys expire.

Jobs run for real (the API in this process, the `inline_worker` against the sim), then are
made old by writing their times in SQL; the purge (`core.services.retention`) is called as
a worker's sweeper calls it, on the SQL clock. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, insert, select, update

from core.config import load_config
from core.redis.keys import Keys
from core.services.retention import PurgeReport, RetentionPurger, purge
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import (
    Batch,
    FileChunk,
    Job,
    JobAttempt,
    StoredFile,
    Tenant,
    UsageRollup,
    WebhookAttempt,
    WebhookDelivery,
)
from tests.api_calls import job_body
from tests.conftest import InlineWorker, bearer

WEBHOOK_URL = "https://hooks.example.com/jobgate"  # never called: the inline worker only records


def purge_now(worker: InlineWorker, settings: Settings, **options: Any) -> PurgeReport:
    return purge(
        worker.sessions,
        SqlClock(worker.engine.dialect.name),
        load_config(settings.config_path()),
        retention_days=options.pop("retention_days", settings.retention_days),
        idempotency_ttl_s=options.pop("idempotency_ttl_s", settings.idempotency_ttl_s),
        **options,
    )


async def run_jobs(
    client: httpx.AsyncClient, worker: InlineWorker, count: int, *, headers: dict[str, str] | None = None
) -> list[str]:
    job_ids = []
    for i in range(count):
        response = await client.post(
            "/v1/jobs",
            json=job_body(f"retained prompt {i}", webhook_url=WEBHOOK_URL, metadata={"n": str(i)}),
            headers=headers,
        )
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])
    for job_id in job_ids:
        await asyncio.to_thread(worker.run, job_id)
    return job_ids


def make_old(worker: InlineWorker, job_ids: Iterable[str], *, days: float) -> None:
    """The jobs were made, and finished, `days` ago (their batches, if complete, completed then)."""
    when = datetime.now(UTC) - timedelta(days=days)
    job_ids = list(job_ids)
    with worker.sessions() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(created_at=when, finished_at=when))
        batch_ids = select(Job.batch_id).where(Job.id.in_(job_ids))
        session.execute(update(Batch).where(Batch.id.in_(batch_ids)).values(created_at=when))
        complete = Batch.completed_at.is_not(None)
        session.execute(update(Batch).where(Batch.id.in_(batch_ids), complete).values(completed_at=when))
        session.commit()


def count(worker: InlineWorker, model: Any, *where: Any) -> int:
    with worker.sessions() as session:
        return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


async def usage_views(client: httpx.AsyncClient, since: datetime) -> dict[str, Any]:
    """`/v1/usage` as every grouping and an hour-aligned window show it (the budgets aside)."""
    start = since.replace(minute=0, second=0, microsecond=0)
    end = (datetime.now(UTC) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    views = {}
    for group_by in ("model", "day", "batch"):
        for window in ({}, {"from": start.isoformat(), "to": end.isoformat()}):
            response = await client.get("/v1/usage", params={"group_by": group_by, **window})
            assert response.status_code == 200, response.text
            body = response.json()
            views[f"{group_by} {sorted(window)}"] = {"data": body["data"], "total": body["total"]}
    return views


@pytest.fixture
def tenant_b(make_key: Callable[[str], str]) -> dict[str, str]:
    return bearer(make_key("tenant-b"))


async def test_a_job_past_the_window_goes_with_its_attempts_and_deliveries_and_usage_stays(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    old, recent = await run_jobs(api_client, inline_worker, 2)
    make_old(inline_worker, [old], days=settings.retention_days + 1)
    with inline_worker.sessions() as session:
        delivery_id = session.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.job_id == old)
        ).scalar_one()
        session.execute(
            insert(WebhookAttempt).values(
                delivery_id=delivery_id, attempt=1, at=datetime.now(UTC), status_code=500, latency_ms=3
            )
        )
        session.commit()
    before = await usage_views(api_client, datetime.now(UTC) - timedelta(days=40))
    assert before["model []"]["total"]["requests"] == 2

    report = purge_now(inline_worker, settings)

    assert (report.jobs, report.complete) == (1, True)
    assert (await api_client.get(f"/v1/jobs/{old}")).status_code == 404
    assert count(inline_worker, Job, Job.id == old) == 0
    assert count(inline_worker, JobAttempt, JobAttempt.job_id == old) == 0
    assert count(inline_worker, WebhookDelivery, WebhookDelivery.job_id == old) == 0
    assert count(inline_worker, WebhookAttempt, WebhookAttempt.delivery_id == delivery_id) == 0
    assert (await api_client.get(f"/v1/jobs/{recent}")).json()["status"] == "succeeded"
    assert count(inline_worker, JobAttempt, JobAttempt.job_id == recent) == 1
    assert count(inline_worker, WebhookDelivery, WebhookDelivery.job_id == recent) == 1
    assert await usage_views(api_client, datetime.now(UTC) - timedelta(days=40)) == before
    assert purge_now(inline_worker, settings).jobs == 0  # nothing twice


async def test_a_tenants_shorter_window_applies_to_its_work_only(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings, tenant_b: dict[str, str]
) -> None:
    a_old, a_recent = await run_jobs(api_client, inline_worker, 2)
    (b_old,) = await run_jobs(api_client, inline_worker, 1, headers=tenant_b)
    make_old(inline_worker, [a_old, b_old], days=3)
    make_old(inline_worker, [a_recent], days=1)
    with inline_worker.sessions() as session:
        session.execute(update(Tenant).where(Tenant.name == "tenant-a").values(retention_days=2))
        session.commit()

    report = purge_now(inline_worker, settings)

    assert report.jobs == 1
    assert (await api_client.get(f"/v1/jobs/{a_old}")).status_code == 404
    assert (await api_client.get(f"/v1/jobs/{a_recent}")).status_code == 200
    assert (await api_client.get(f"/v1/jobs/{b_old}", headers=tenant_b)).status_code == 200


async def test_a_finished_batch_past_the_window_goes_with_its_jobs_and_files_and_usage_stays(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    requests = [{"custom_id": f"r{i}", "body": job_body(f"batch prompt {i}")} for i in range(3)]
    batch = (
        await api_client.post("/v1/batches", json={"requests": requests, "webhook_url": WEBHOOK_URL})
    ).json()
    await asyncio.to_thread(inline_worker.run_queued)
    assert (await api_client.get(f"/v1/batches/{batch['id']}")).json()["status"] == "completed"
    upload = await api_client.post(
        "/openai/v1/files",
        files={"file": ("input.jsonl", b'{"custom_id": "x"}\n', "application/jsonl")},
        data={"purpose": "batch"},
    )
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    with inline_worker.sessions() as session:
        job_ids = list(session.execute(select(Job.id).where(Job.batch_id == batch["id"])).scalars())
        session.execute(
            update(StoredFile)
            .where(StoredFile.id == file_id)
            .values(created_at=datetime.now(UTC) - timedelta(days=31))
        )
        session.commit()
    make_old(inline_worker, job_ids, days=31)
    before = await usage_views(api_client, datetime.now(UTC) - timedelta(days=40))
    assert [row["batch"] for row in before["batch []"]["data"]] == [batch["id"]]

    report = purge_now(inline_worker, settings, chunk_rows=2)

    assert (report.jobs, report.batches, report.files) == (3, 1, 1)
    assert (await api_client.get(f"/v1/batches/{batch['id']}")).status_code == 404
    assert count(inline_worker, Job, Job.batch_id == batch["id"]) == 0
    assert count(inline_worker, WebhookDelivery, WebhookDelivery.batch_id == batch["id"]) == 0
    assert (await api_client.get(f"/openai/v1/files/{file_id}")).status_code == 404
    assert count(inline_worker, FileChunk, FileChunk.file_id == file_id) == 0
    assert await usage_views(api_client, datetime.now(UTC) - timedelta(days=40)) == before


async def test_a_batch_still_running_keeps_its_old_jobs(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    requests = [{"custom_id": f"r{i}", "body": job_body(f"slow batch {i}")} for i in range(2)]
    batch = (await api_client.post("/v1/batches", json={"requests": requests})).json()
    with inline_worker.sessions() as session:
        first = session.execute(select(Job.id).where(Job.batch_id == batch["id"], Job.seq == 0)).scalar_one()
    await asyncio.to_thread(inline_worker.run, first)
    make_old(inline_worker, [first], days=31)

    assert purge_now(inline_worker, settings).jobs == 0
    assert (await api_client.get(f"/v1/batches/{batch['id']}")).json()["counts"]["succeeded"] == 1


async def test_two_purgers_at_once_purge_each_job_once(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    job_ids = await run_jobs(api_client, inline_worker, 12)
    make_old(inline_worker, job_ids, days=31)
    before = await usage_views(api_client, datetime.now(UTC) - timedelta(days=40))
    clock = SqlClock(inline_worker.engine.dialect.name)
    config = load_config(settings.config_path())

    def purger() -> RetentionPurger:
        return RetentionPurger(
            inline_worker.sessions,
            clock,
            redis_client,
            Keys(settings.redis_prefix),
            config,
            retention_days=30,
            idempotency_ttl_s=86400,
            interval_s=3600,
        )

    # Without the fleet lock (as if it lapsed mid-purge), each chunk still rolls up only what
    # its own DELETE removed.
    start = threading.Barrier(2)
    reports: list[PurgeReport] = []

    def race() -> None:
        start.wait(timeout=10)
        reports.append(purge_now(inline_worker, settings, chunk_rows=3))

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(report.jobs for report in reports) == 12
    assert count(inline_worker, Job) == 0
    assert await usage_views(api_client, datetime.now(UTC) - timedelta(days=40)) == before

    # With it: one purger works, the other finds the purge taken, and none is due again
    # until the interval has passed.
    more = await run_jobs(api_client, inline_worker, 3)
    make_old(inline_worker, more, days=31)
    first, second = purger(), purger()
    turns = [first.run_turn(), second.run_turn(), first.run_turn()]
    assert turns[0] is not None and turns[0].jobs == 3
    assert turns[1:] == [None, None]
    assert redis_client.pttl(Keys(settings.redis_prefix).maintenance_lock("retention")) > 3_000_000
    with inline_worker.sessions() as session:
        rolled = session.execute(select(func.sum(UsageRollup.requests))).scalar_one()
    assert rolled == 15


async def test_an_idempotency_key_older_than_its_ttl_makes_a_new_job(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    key = {"Idempotency-Key": "nightly-report-1"}
    first = await api_client.post("/v1/jobs", json=job_body("report"), headers=key)
    repeat = await api_client.post("/v1/jobs", json=job_body("report"), headers=key)
    assert (first.status_code, repeat.status_code) == (202, 200)
    assert repeat.json()["id"] == first.json()["id"]
    with inline_worker.sessions() as session:
        session.execute(
            update(Job)
            .where(Job.id == first.json()["id"])
            .values(created_at=datetime.now(UTC) - timedelta(seconds=settings.idempotency_ttl_s + 60))
        )
        session.commit()

    later = await api_client.post("/v1/jobs", json=job_body("report"), headers=key)
    again = await api_client.post("/v1/jobs", json=job_body("report"), headers=key)

    assert later.status_code == 202 and later.json()["id"] != first.json()["id"]
    assert again.status_code == 200 and again.json()["id"] == later.json()["id"]
    assert (await api_client.get(f"/v1/jobs/{first.json()['id']}")).status_code == 200


async def test_an_idempotency_key_older_than_its_ttl_makes_a_new_batch(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    key = {"Idempotency-Key": "nightly-batch-1"}
    body = {"requests": [{"custom_id": "only", "body": job_body("batch report")}]}
    first = await api_client.post("/v1/batches", json=body, headers=key)
    assert first.status_code == 201
    with inline_worker.sessions() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == first.json()["id"])
            .values(created_at=datetime.now(UTC) - timedelta(seconds=settings.idempotency_ttl_s + 60))
        )
        session.commit()

    later = await api_client.post("/v1/batches", json=body, headers=key)

    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]


async def test_the_purge_clears_expired_idempotency_keys_of_work_it_keeps(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    old = await api_client.post("/v1/jobs", json=job_body("old"), headers={"Idempotency-Key": "old"})
    fresh = await api_client.post("/v1/jobs", json=job_body("fresh"), headers={"Idempotency-Key": "fresh"})
    with inline_worker.sessions() as session:
        session.execute(
            update(Job)
            .where(Job.id == old.json()["id"])
            .values(created_at=datetime.now(UTC) - timedelta(days=2))
        )
        session.commit()

    report = purge_now(inline_worker, settings)

    assert (report.jobs, report.job_keys) == (0, 1)
    with inline_worker.sessions() as session:
        keys = dict(session.execute(select(Job.id, Job.idempotency_key)).all())
    assert keys == {old.json()["id"]: None, fresh.json()["id"]: "fresh"}
