"""Waiting for a job (`api/waiting.py`), the part under `?wait=` and the synchronous path."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from sqlalchemy import select, update

from api.notifier import JobNotifier
from api.waiting import wait_for_job
from core.settings import Settings
from core.store.db import make_async_engine, make_async_sessions, make_sync_engine
from core.store.models import Job
from tests.api_calls import submit
from tests.conftest import sqlite_only


@dataclass
class WaitingState:
    """The one part of the API's state a waiter uses."""

    notifier: JobNotifier


@sqlite_only
async def test_a_job_finished_before_its_waiter_registered_is_answered_at_once(
    api_client: httpx.AsyncClient, settings: Settings
) -> None:
    # The sync path's race: the worker finishes (and announces) the job between the submit and
    # the waiter's registration, so no notification comes; the waiter's first read must see
    # the row as it is, not as the submitting session last saw it.
    job_id = (await submit(api_client, "finished fast"))["id"]
    engine = make_async_engine(settings)
    try:
        async with make_async_sessions(engine)() as session:
            seen = (await session.execute(select(Job).where(Job.id == job_id))).scalars().one()
            assert seen.status == "queued"
            sync_engine = make_sync_engine(settings)
            with sync_engine.begin() as connection:
                connection.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
            sync_engine.dispose()
            unheard = JobNotifier(None, "unused")  # type: ignore[arg-type]  # never started
            started = time.monotonic()

            job = await wait_for_job(WaitingState(unheard), session, seen.tenant_id, job_id, 10)  # type: ignore[arg-type]

        assert job.status == "succeeded"
        assert time.monotonic() - started < 2, "the waiter sat out a re-read interval"
    finally:
        await engine.dispose()
