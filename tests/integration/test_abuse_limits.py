"""Abuse limits at the API's edge (README, "Abuse limits"), against real Redis and SQL.

A body that stops coming is a 408 that closes the connection; a tenant has at most
`JOBGATE_MAX_UPLOADS_PER_TENANT` uploads in progress; sync calls wait within per-tenant and
per-process caps, as do long polls; an address that tried too many
unknown keys is refused before any lookup, while other addresses are served. A JSON batch's
options may follow its requests. (The slow-upload flood against a real server and its pool:
tests/e2e/test_slow_uploads.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import func, select

from api.app import create_app
from core.settings import Settings
from core.store import jobs as store
from core.store.models import Job
from tests.api_calls import job_body
from tests.conftest import IN_PROCESS_URL, InlineWorker, bearer, sqlite_only
from tests.processes import wait_until

pytestmark = sqlite_only

JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def clients_from(settings: Settings, *addresses: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One in-process API, and a client for it from each of `addresses` (the ASGI client address)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), AsyncExitStack() as stack:
        clients = []
        for address in addresses:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            client = httpx.AsyncClient(transport=transport, base_url=IN_PROCESS_URL, timeout=30)
            clients.append(await stack.enter_async_context(client))
        yield clients


def batch_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": job_body(f"prompt for {custom_id}", **body)}


class HeldUpload:
    """A JSON batch upload whose body stops after its first bytes until `release()`; `started`
    is set once the server has begun reading it (so it holds its upload slot)."""

    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.started = asyncio.Event()
        self._released = asyncio.Event()
        self.answer = asyncio.create_task(
            client.post("/v1/batches", content=self._body(), headers={**JSON, **bearer(key)})
        )

    async def _body(self) -> AsyncIterator[bytes]:
        self.started.set()
        yield b'{"requests": ['
        await self._released.wait()
        yield json.dumps(batch_line("a")).encode() + b"]}"

    def release(self) -> None:
        self._released.set()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# --- Body reads time out ------------------------------------------------------------------------


async def test_a_body_that_stops_coming_is_refused_408_and_the_connection_closed(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    key = make_key("tenant-a")
    limited = settings.model_copy(update={"body_read_timeout_s": 0.5, "max_uploads_per_tenant": 1})
    async with clients_from(limited, "127.0.0.1") as (client,):
        stalled = HeldUpload(client, key)
        response = await asyncio.wait_for(stalled.answer, timeout=20)
        # The upload's slot is free again: the tenant's one upload goes through.
        after = await client.post("/v1/batches", json={"requests": [batch_line("b")]}, headers=bearer(key))

    error = error_of(response, 408)
    assert error["type"] == "request_timeout"
    assert "JOBGATE_BODY_READ_TIMEOUT_S" in error["message"]
    assert response.headers["connection"] == "close"
    assert after.status_code == 201, after.text


# --- Concurrent uploads per tenant ----------------------------------------------------------------


async def test_a_tenant_has_at_most_its_cap_of_uploads_in_progress_and_others_are_not_held_back(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    key_a, key_b = make_key("tenant-a"), make_key("tenant-b")
    async with clients_from(settings.model_copy(update={"max_uploads_per_tenant": 2}), "127.0.0.1") as (
        client,
    ):
        held = [HeldUpload(client, key_a) for _ in range(2)]
        await asyncio.wait_for(asyncio.gather(*(upload.started.wait() for upload in held)), timeout=20)

        refused = await client.post(
            "/v1/batches", json={"requests": [batch_line("c")]}, headers=bearer(key_a)
        )
        files = await client.post(
            "/openai/v1/files",
            files={"file": ("in.jsonl", b"{}\n")},
            data={"purpose": "batch"},
            headers=bearer(key_a),
        )
        other_tenant = await client.post(
            "/v1/batches", json={"requests": [batch_line("d")]}, headers=bearer(key_b)
        )
        for upload in held:
            upload.release()
        finished = await asyncio.wait_for(asyncio.gather(*(upload.answer for upload in held)), timeout=20)
        again = await client.post("/v1/batches", json={"requests": [batch_line("e")]}, headers=bearer(key_a))

    for response in (refused, files):
        error = error_of(response, 429)
        assert error["type"] == "rate_limit_exceeded"
        assert "JOBGATE_MAX_UPLOADS_PER_TENANT" in error["message"]
        assert response.headers["retry-after"] == "5"
    assert other_tenant.status_code == 201, other_tenant.text
    assert [response.status_code for response in finished] == [201, 201]
    assert again.status_code == 201, again.text


# --- JSON batches read as a stream ----------------------------------------------------------------


async def test_json_batch_options_after_its_requests_apply_to_every_request_that_sets_none(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    key = make_key("tenant-a", allow_interactive=True)
    body = {"requests": [batch_line("plain"), batch_line("own", priority="batch")], "priority": "interactive"}
    payload = json.dumps(body).encode()

    async def trickled() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    async with clients_from(settings, "127.0.0.1") as (client,):
        created = await client.post("/v1/batches", content=trickled(), headers={**JSON, **bearer(key)})
        jobs = (await client.get("/v1/jobs", headers=bearer(key))).json()["data"]

    assert created.status_code == 201, created.text
    assert {job["custom_id"]: job["priority"] for job in jobs} == {"plain": "interactive", "own": "batch"}


# --- Long polls and sync waits ------------------------------------------------------------------


def wait_for_queued(worker: InlineWorker, count: int) -> None:
    def queued() -> bool:
        with worker.sessions() as session:
            found = session.scalar(select(func.count()).select_from(Job).where(Job.status == store.QUEUED))
        return found == count

    wait_until(queued, timeout_s=20, what=f"{count} queued jobs")


async def test_sync_calls_and_long_polls_past_the_tenant_or_process_cap_are_refused_429(
    settings: Settings, make_key: Callable[..., str], inline_worker: InlineWorker
) -> None:
    keys = {tenant: make_key(tenant) for tenant in ("tenant-a", "tenant-b", "tenant-c")}
    # Every sync call takes the queue, and waits there until the test runs its job.
    capped = settings.model_copy(
        update={"sync_max_in_flight": 0, "max_waits_per_tenant": 1, "max_waits_per_process": 2}
    )

    def chat(client: httpx.AsyncClient, tenant: str) -> asyncio.Task[httpx.Response]:
        request = client.post("/v1/chat/completions", json=job_body("Hello?"), headers=bearer(keys[tenant]))
        return asyncio.create_task(request)

    async with clients_from(capped, "127.0.0.1") as (client,):
        first_a = chat(client, "tenant-a")
        await asyncio.to_thread(wait_for_queued, inline_worker, 1)
        second_a = await asyncio.wait_for(chat(client, "tenant-a"), timeout=20)
        anthropic_a = await client.post(
            "/anthropic/v1/messages",
            json={"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]},
            headers=bearer(keys["tenant-a"]),
        )
        first_b = chat(client, "tenant-b")
        await asyncio.to_thread(wait_for_queued, inline_worker, 2)
        first_c = await asyncio.wait_for(chat(client, "tenant-c"), timeout=20)
        # The process is full: a long poll is refused too; without `wait` the job is read.
        job_id = (await client.get("/v1/jobs", headers=bearer(keys["tenant-a"]))).json()["data"][0]["id"]
        polled = await asyncio.wait_for(
            client.get(f"/v1/jobs/{job_id}", params={"wait": 60}, headers=bearer(keys["tenant-a"])),
            timeout=20,
        )
        read = await client.get(f"/v1/jobs/{job_id}", headers=bearer(keys["tenant-a"]))

        await asyncio.to_thread(inline_worker.run_queued)
        answered = await asyncio.wait_for(asyncio.gather(first_a, first_b), timeout=30)

    tenant_error = error_of(second_a, 429)
    assert tenant_error["type"] == "rate_limit_exceeded"
    assert "JOBGATE_MAX_WAITS_PER_TENANT" in tenant_error["message"]
    assert second_a.headers["retry-after"] == "1"
    assert anthropic_a.status_code == 429, anthropic_a.text
    assert anthropic_a.json()["error"]["type"] == "rate_limit_error"  # Anthropic's shape there
    assert "JOBGATE_MAX_WAITS_PER_PROCESS" in error_of(first_c, 429)["message"]
    assert "JOBGATE_MAX_WAITS_PER_TENANT" in error_of(polled, 429)["message"]
    assert polled.headers["retry-after"] == "1"
    assert read.status_code == 200, read.text
    assert read.json()["status"] == "queued"
    assert [response.status_code for response in answered] == [200, 200]


# --- Failed authentication from one address -----------------------------------------------------


async def test_an_address_that_tried_too_many_wrong_keys_is_refused_429_while_others_are_served(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    limited = settings.model_copy(update={"auth_failures_per_address": 3, "auth_failure_window_s": 60})
    async with clients_from(limited, "203.0.113.7", "198.51.100.9") as (guesser, neighbour):
        wrong = [await guesser.get("/v1/jobs", headers=bearer(f"jg_wrong_{attempt}")) for attempt in range(4)]
        # A real key (not yet checked by this process) from the guessing address waits too...
        right_key_from_guesser = await guesser.get("/v1/jobs", headers=bearer(make_key("tenant-a")))
        # ...while another address's key is served.
        other_address = await neighbour.get("/v1/jobs", headers=bearer(make_key("tenant-b")))

    assert [response.status_code for response in wrong[:3]] == [401, 401, 401]
    for refused in (wrong[3], right_key_from_guesser):
        error = error_of(refused, 429)
        assert error["type"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other_address.status_code == 200, other_address.text
