"""Webhook delivery against real SQL (SQLite and Postgres), Redis and a receiver process.

Jobs are submitted through the API in this process and run by the real executor
(`inline_worker`), which writes the outbox rows; the test then plays the `deliver_webhook`
actor, calling the real `WebhookDeliverer` with a real `WebhookSender`, so it decides when
each attempt happens. The deliverer's clock is the real one plus an offset the test moves
forward (the retry schedule and the disable-after window need no sleeps). The receiver is
`tests/webhook_receiver.py` on 127.0.0.1: it verifies every request with `standardwebhooks`
and reports what it saw.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from core import queue
from core.redis.keys import Keys
from core.services.maintenance import sweep
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import Job, WebhookDelivery
from core.webhooks.delivery import AttemptResult, WebhookDeliverer
from core.webhooks.outbox import announce_completed_batches, commit_final
from core.webhooks.sender import WebhookSender
from core.webhooks.ssrf import IPAddress, UrlPolicy, resolve_host
from tests.api_calls import job_body, submit
from tests.conftest import InlineWorker
from tests.processes import wait_until
from tests.webhook_receiver import ReceiverHandle, run_receiver

SCHEDULE_S = [0.0, 5.0, 5.0]
DISABLE_AFTER_S = 2.0
ATTEMPT_TIMEOUT_S = 2.0
DEVELOPMENT = UrlPolicy(allow_private=True, allow_http=True)


class StepClock:
    """The real UTC time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def utcnow(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers listen on 127.0.0.1, so this API accepts http:// and private webhook URLs."""
    return settings.model_copy(update={"webhook_allow_private": True})


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def make_deliverer(
    inline_worker: InlineWorker, clock: StepClock
) -> Iterator[Callable[..., WebhookDeliverer]]:
    """`make_deliverer(policy=..., resolver=...)`: the deliverer as a worker builds it, on our clock."""
    senders: list[WebhookSender] = []

    def make(
        policy: UrlPolicy = DEVELOPMENT,
        resolver: Callable[[str, int], Sequence[IPAddress]] | None = None,
    ) -> WebhookDeliverer:
        sender = WebhookSender(policy, timeout_s=ATTEMPT_TIMEOUT_S, resolver=resolver)
        senders.append(sender)
        return WebhookDeliverer(
            sessions=inline_worker.sessions,
            sender=sender,
            schedule_s=SCHEDULE_S,
            disable_after_s=DISABLE_AFTER_S,
            attempt_timeout_s=ATTEMPT_TIMEOUT_S,
            utcnow=clock.utcnow,
        )

    yield make
    for sender in senders:
        sender.close()


@pytest.fixture
def deliverer(make_deliverer: Callable[..., WebhookDeliverer]) -> WebhookDeliverer:
    return make_deliverer()


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[ReceiverHandle]:
    with run_receiver() as handle:
        yield handle


@pytest.fixture
def receiver(shared_receiver: ReceiverHandle) -> ReceiverHandle:
    """The module's receiver process, blank for this test (no records, mode ok, no secrets)."""
    shared_receiver.reset()
    return shared_receiver


async def create_endpoint(client: httpx.AsyncClient, url: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/webhook-endpoints", json={"url": url, **extra})
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


async def tenant_secret(client: httpx.AsyncClient) -> str:
    secret: str = (await client.get("/v1/webhook-secret")).json()["secret"]
    return secret


async def delivery_log(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def pending_deliveries(sessions: sessionmaker[Session]) -> list[str]:
    """Every pending delivery, whoever wrote it (the executor, or the API on a cancel)."""
    with sessions() as session:
        stmt = select(WebhookDelivery.id).where(WebhookDelivery.status == "pending")
        return list(session.execute(stmt.order_by(WebhookDelivery.id)).scalars())


def lock_waits(worker: InlineWorker) -> int:
    """Postgres backends of this database waiting for a lock."""
    with worker.sessions() as session:
        stmt = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(session.execute(stmt).scalar_one())


def deliver_all(deliverer: WebhookDeliverer, delivery_ids: Sequence[str]) -> list[AttemptResult]:
    return [deliverer.deliver(delivery_id) for delivery_id in delivery_ids]


# --- Signed, retried, logged ------------------------------------------------------------------


async def test_job_event_reaches_its_webhook_url_signed_with_the_tenant_secret(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
) -> None:
    receiver.configure(secrets=[await tenant_secret(api_client)])
    job = await submit(api_client, "Where is my parcel?", webhook_url=f"{receiver.url}/chatbot")

    inline_worker.run(job["id"])
    results = deliver_all(deliverer, inline_worker.deliveries)

    assert [r.status for r in results] == ["delivered"]
    [event] = receiver.delivered(payloads=True)
    assert event["path"] == "/chatbot"
    assert event["verified"] is True
    assert event["type"] == "job.succeeded"
    payload = event["payload"]
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["timestamp"].endswith("Z")
    assert payload["data"] == (await api_client.get(f"/v1/jobs/{job['id']}")).json()
    assert payload["data"]["result"]["choices"][0]["message"]["content"] == "echo: Where is my parcel?"
    [logged] = await delivery_log(api_client, job["id"])
    assert logged["webhook_id"] == event["webhook_id"]
    assert logged["status"] == "delivered"


async def test_failed_attempts_are_retried_on_schedule_with_the_same_webhook_id_and_a_fresh_signature(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
    clock: StepClock,
) -> None:
    receiver.configure(secrets=[await tenant_secret(api_client)], mode="fail")
    job = await submit(api_client, webhook_url=f"{receiver.url}/flaky")
    inline_worker.run(job["id"])
    [delivery_id] = inline_worker.deliveries

    first = deliverer.deliver(delivery_id)
    too_early = deliverer.deliver(delivery_id)
    clock.advance(SCHEDULE_S[1])
    receiver.configure(mode="ok")
    second = deliverer.deliver(delivery_id)
    duplicate = deliverer.deliver(delivery_id)

    assert first == AttemptResult("pending", SCHEDULE_S[1])
    assert too_early.status == "skipped"
    assert second.status == "delivered"
    assert duplicate.status == "skipped"
    seen = receiver.requests()
    assert [r["status"] for r in seen] == [500, 200]
    assert all(r["verified"] for r in seen)
    assert seen[0]["webhook_id"] == seen[1]["webhook_id"]
    assert int(seen[1]["timestamp"]) - int(seen[0]["timestamp"]) >= SCHEDULE_S[1]

    [logged] = await delivery_log(api_client, job["id"])
    assert logged["id"] == delivery_id
    assert logged["event_type"] == "job.succeeded"
    assert logged["webhook_id"] == seen[0]["webhook_id"]
    assert logged["endpoint_id"] is None
    assert logged["url"] == f"{receiver.url}/flaky"
    assert logged["status"] == "delivered"
    attempts = logged["attempts"]
    assert [(a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (1, 500, "http status 500"),
        (2, 200, None),
    ]
    assert all(isinstance(a["latency_ms"], int) and a["at"].endswith("Z") for a in attempts)


async def test_delivery_failed_on_every_scheduled_attempt_is_resent_by_hand_with_the_same_webhook_id(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
    clock: StepClock,
) -> None:
    receiver.configure(secrets=[await tenant_secret(api_client)], mode="fail")
    job = await submit(api_client, webhook_url=f"{receiver.url}/down")
    inline_worker.run(job["id"])
    [delivery_id] = inline_worker.deliveries
    for delay_s in SCHEDULE_S:
        clock.advance(delay_s)
        deliverer.deliver(delivery_id)
    [exhausted] = await delivery_log(api_client, job["id"])
    assert exhausted["status"] == "failed"
    assert len(exhausted["attempts"]) == len(SCHEDULE_S)

    receiver.configure(mode="ok")
    retried = await api_client.post(f"/v1/webhook-deliveries/{delivery_id}/retry")
    # What the deliver_webhook actor does with the message the API just queued.
    by_hand = deliverer.deliver(delivery_id, manual=True)

    assert retried.status_code == 202
    assert by_hand.status == "delivered"
    seen = receiver.requests()
    assert [r["status"] for r in seen] == [500, 500, 500, 200]
    assert len({r["webhook_id"] for r in seen}) == 1
    assert seen[-1]["verified"] is True
    [logged] = await delivery_log(api_client, job["id"])
    assert logged["status"] == "delivered"
    assert [a["status_code"] for a in logged["attempts"]] == [500, 500, 500, 200]


# --- Secrets, endpoints and their events ------------------------------------------------------


async def test_tenant_endpoints_receive_every_event_their_events_list_allows(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
) -> None:
    everything = await create_endpoint(api_client, f"{receiver.url}/all")
    failures = await create_endpoint(api_client, f"{receiver.url}/failures", events=["job.failed"])
    batches = await create_endpoint(api_client, f"{receiver.url}/batches", events=["batch.completed"])
    deleted = await create_endpoint(api_client, f"{receiver.url}/deleted")
    await api_client.delete(f"/v1/webhook-endpoints/{deleted['id']}")
    receiver.configure(secrets=[everything["secret"], failures["secret"], batches["secret"]])

    await submit(api_client, "fine")
    await submit(api_client, "too late", deadline="2020-01-01T00:00:00Z")
    cancelled = await submit(api_client, "never mind")
    await api_client.post(f"/v1/jobs/{cancelled['id']}/cancel")
    batch = await api_client.post(
        "/v1/batches",
        json={"requests": [{"custom_id": f"line-{i}", "body": job_body(f"line {i}")} for i in range(2)]},
    )
    assert batch.status_code == 201, batch.text
    inline_worker.run_queued()
    results = deliver_all(deliverer, pending_deliveries(inline_worker.sessions))

    assert {r.status for r in results} == {"delivered"}
    by_path: dict[str, list[tuple[str, list[int]]]] = {}
    for record in receiver.delivered():
        by_path.setdefault(record["path"], []).append((record["type"], record["verified_with"]))
    assert sorted(by_path["/all"]) == sorted(
        [("job.succeeded", [0])] * 3 + [("job.failed", [0]), ("job.cancelled", [0]), ("batch.completed", [0])]
    )
    assert by_path["/failures"] == [("job.failed", [1])]
    assert by_path["/batches"] == [("batch.completed", [2])]
    assert "/deleted" not in by_path


async def test_rotated_endpoint_secret_signs_beside_the_old_one_and_both_verify(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
) -> None:
    endpoint = await create_endpoint(api_client, f"{receiver.url}/rotating")
    old = endpoint["secret"]
    new = (await api_client.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")).json()["secret"]
    receiver.configure(secrets=[old, new])

    job = await submit(api_client)
    inline_worker.run(job["id"])
    deliver_all(deliverer, inline_worker.deliveries)

    [event] = receiver.delivered()
    assert event["signatures"] == 2
    assert event["verified_with"] == [0, 1]


async def test_rotated_tenant_secret_signs_job_webhooks_beside_the_old_one_and_both_verify(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
) -> None:
    old = await tenant_secret(api_client)
    new = (await api_client.post("/v1/webhook-secret/rotate")).json()["secret"]
    receiver.configure(secrets=[old, new])

    job = await submit(api_client, webhook_url=f"{receiver.url}/job")
    inline_worker.run(job["id"])
    deliver_all(deliverer, inline_worker.deliveries)

    [event] = receiver.delivered()
    assert event["signatures"] == 2
    assert event["verified_with"] == [0, 1]


async def test_endpoint_failing_past_disable_after_is_disabled_with_its_reason_until_patched_back_on(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
    clock: StepClock,
) -> None:
    endpoint = await create_endpoint(api_client, f"{receiver.url}/broken")
    receiver.configure(secrets=[endpoint["secret"]], mode="fail")
    url = f"/v1/webhook-endpoints/{endpoint['id']}"
    first_job = await submit(api_client, "one")
    inline_worker.run(first_job["id"])
    [delivery_id] = inline_worker.deliveries

    deliverer.deliver(delivery_id)
    still_enabled = (await api_client.get(url)).json()
    clock.advance(SCHEDULE_S[1])
    deliverer.deliver(delivery_id)
    disabled = (await api_client.get(url)).json()

    assert still_enabled["enabled"] is True
    assert disabled["enabled"] is False
    assert disabled["disabled_reason"].startswith("Every delivery has failed since ")
    assert "http status 500" in disabled["disabled_reason"]

    # Disabled: no new event is queued for it, and its scheduled retry is not sent.
    second_job = await submit(api_client, "two")
    inline_worker.run(second_job["id"])
    clock.advance(SCHEDULE_S[2])
    receiver.configure(mode="ok")
    held_back = deliverer.deliver(delivery_id)
    assert await delivery_log(api_client, second_job["id"]) == []
    assert held_back.status == "skipped"
    assert len(receiver.requests()) == 2

    reenabled = await api_client.patch(url, json={"enabled": True})
    resumed = deliverer.deliver(delivery_id)

    assert reenabled.status_code == 200
    assert reenabled.json()["enabled"] is True
    assert reenabled.json()["disabled_reason"] is None
    assert resumed.status == "delivered"
    assert [r["status"] for r in receiver.requests()] == [500, 500, 200]
    [logged] = await delivery_log(api_client, first_job["id"])
    assert [a["status_code"] for a in logged["attempts"]] == [500, 500, 200]


async def test_endpoint_answering_410_gone_is_disabled_at_once_and_its_delivery_ends_failed(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
) -> None:
    endpoint = await create_endpoint(api_client, f"{receiver.url}/moved")
    receiver.configure(secrets=[endpoint["secret"]], mode="gone")
    job = await submit(api_client)
    inline_worker.run(job["id"])

    [result] = deliver_all(deliverer, inline_worker.deliveries)

    assert result.status == "failed"
    after = (await api_client.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert after["enabled"] is False
    assert "410 Gone" in after["disabled_reason"]


async def test_result_over_256_kb_is_replaced_by_a_link_to_the_job(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    deliverer: WebhookDeliverer,
    receiver: ReceiverHandle,
) -> None:
    receiver.configure(secrets=[await tenant_secret(api_client)])
    big = await submit(api_client, "x" * 300_000, webhook_url=f"{receiver.url}/big")
    await submit(api_client, "short", webhook_url=f"{receiver.url}/small")

    inline_worker.run_queued()
    deliver_all(deliverer, inline_worker.deliveries)

    events = {r["path"]: r["payload"]["data"] for r in receiver.delivered(payloads=True)}
    assert events["/big"]["result"] is None
    assert events["/big"]["result_url"] == f"/v1/jobs/{big['id']}"
    assert events["/big"]["status"] == "succeeded"
    assert events["/small"]["result"]["choices"][0]["message"]["content"] == "echo: short"
    assert "result_url" not in events["/small"]
    full = (await api_client.get(f"/v1/jobs/{big['id']}")).json()
    assert len(full["result"]["choices"][0]["message"]["content"]) == len("echo: ") + 300_000


# --- The SSRF guard at delivery ---------------------------------------------------------------

RESOLVED_ADDRESSES = {
    "ipv4 loopback": ("127.0.0.1", "loopback"),
    "ipv6 loopback": ("::1", "loopback"),
    "10/8 private": ("10.1.2.3", "private"),
    "172.16/12 private": ("172.16.8.9", "private"),
    "192.168/16 private": ("192.168.0.77", "private"),
    "cloud metadata": ("169.254.169.254", "cloud metadata service"),
    "ipv6 unique local fd00::/8": ("fd00::5", "unique local"),
    "unspecified 0.0.0.0": ("0.0.0.0", "unspecified"),
}


def resolving(name: str, address: str) -> Callable[[str, int], Sequence[IPAddress]]:
    """A resolver that answers `address` for `name`, as a rebinding or internal DNS record would."""

    def resolve(host: str, port: int) -> Sequence[IPAddress]:
        return [ip_address(address)] if host == name else resolve_host(host, port)

    return resolve


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("address", "reason"), list(RESOLVED_ADDRESSES.values()), ids=list(RESOLVED_ADDRESSES)
)
async def test_host_resolving_to_a_forbidden_address_at_delivery_is_refused_before_connecting(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    make_deliverer: Callable[..., WebhookDeliverer],
    receiver: ReceiverHandle,
    address: str,
    reason: str,
) -> None:
    # A public-looking name passes the submission check; its DNS answer is only known at delivery.
    port = receiver.url.rsplit(":", 1)[1]
    job = await submit(api_client, webhook_url=f"http://hooks.example.com:{port}/internal")
    inline_worker.run(job["id"])
    production = make_deliverer(
        policy=UrlPolicy(allow_private=False, allow_http=True),
        resolver=resolving("hooks.example.com", address),
    )

    [result] = deliver_all(production, inline_worker.deliveries)

    assert result.status == "pending"  # a refusal is a failed attempt, retried on the schedule
    [logged] = await delivery_log(api_client, job["id"])
    [attempt] = logged["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"] == f"forbidden destination: hooks.example.com resolves to a {reason} address"
    assert address not in json.dumps(logged)  # the tenant does not learn what an internal name resolves to
    assert receiver.requests() == []


async def test_same_host_resolving_to_loopback_is_delivered_when_private_addresses_are_allowed(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    make_deliverer: Callable[..., WebhookDeliverer],
    receiver: ReceiverHandle,
) -> None:
    # The control for the test above: the injected resolver really leads to the receiver.
    port = receiver.url.rsplit(":", 1)[1]
    job = await submit(api_client, webhook_url=f"http://hooks.example.com:{port}/internal")
    inline_worker.run(job["id"])
    development = make_deliverer(resolver=resolving("hooks.example.com", "127.0.0.1"))

    [result] = deliver_all(development, inline_worker.deliveries)

    assert result.status == "delivered"
    assert [r["path"] for r in receiver.requests()] == ["/internal"]


# --- The outbox and the sweeper ---------------------------------------------------------------


async def test_sweeper_dispatches_deliveries_whose_message_was_lost_but_not_a_disabled_endpoints(
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    live = await create_endpoint(api_client, "https://hooks.example.com/live")
    paused = await create_endpoint(api_client, "https://hooks.example.com/paused")
    job = await submit(api_client)
    inline_worker.run(job["id"])  # the inline worker queues no message: as if Redis lost it
    log = {d["endpoint_id"]: d["id"] for d in await delivery_log(api_client, job["id"])}
    await api_client.patch(f"/v1/webhook-endpoints/{paused['id']}", json={"enabled": False})
    keys = Keys(settings.redis_prefix)
    broker = queue.build_broker(settings.redis_url or "", keys, max_connections=4, timeout_s=5)
    clock = SqlClock(inline_worker.engine.dialect.name)

    try:
        sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=0)
    finally:
        broker.close()

    messages = f"{keys.broker_namespace}:{queue.DELIVER_WEBHOOK.queue_name}.msgs"
    assert redis_client.hexists(messages, log[live["id"]])
    assert not redis_client.hexists(messages, log[paused["id"]])


async def two_job_batch(api_client: httpx.AsyncClient, worker: InlineWorker) -> tuple[str, str, str]:
    response = await api_client.post(
        "/v1/batches",
        json={
            "requests": [{"custom_id": c, "body": job_body(c)} for c in ("a", "b")],
            "webhook_url": "https://hooks.example.com/batch",
        },
    )
    batch_id = response.json()["id"]
    with worker.sessions() as session:
        first, second = session.execute(
            select(Job.id).where(Job.batch_id == batch_id).order_by(Job.seq)
        ).scalars()
    return batch_id, first, second


def batch_announcements(worker: InlineWorker, batch_id: str) -> int:
    with worker.sessions() as session:
        return session.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.batch_id == batch_id, WebhookDelivery.event_type == "batch.completed")
        ).scalar_one()


def finish(session: Session, job_id: str, now: datetime) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(status="succeeded", finished_at=now))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_batch_whose_last_two_jobs_finish_in_concurrent_transactions_announces_completion_once(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    batch_id, first, second = await two_job_batch(api_client, inline_worker)
    now = datetime.now(UTC)

    # Two workers' final transactions, open at once: each sees the other's job still running
    # until that one commits. The first to commit checks its batch after its commit, while
    # the other is still open; the second checks after both commits.
    with inline_worker.sessions() as one, inline_worker.sessions() as two:
        finish(one, first, now)
        finish(two, second, now)
        from_one = commit_final(one, [first], now)
        from_two = commit_final(two, [second], now)

    assert batch_announcements(inline_worker, batch_id) == 1
    assert (len(from_one), len(from_two)) == (1, 2)  # the second carries the batch's event


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_batch_checked_by_both_last_jobs_after_both_commits_is_announced_by_one_only(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    batch_id, first, second = await two_job_batch(api_client, inline_worker)
    now = datetime.now(UTC)
    with inline_worker.sessions() as session:
        finish(session, first, now)
        finish(session, second, now)
        session.commit()

    with inline_worker.sessions() as one, inline_worker.sessions() as two:
        from_one = announce_completed_batches(one, [batch_id], now)
        other = threading.Thread(target=lambda: announce_completed_batches(two, [batch_id], now))
        other.start()  # blocks on the batch row the first updated, then finds it completed
        wait_until(
            lambda: not other.is_alive() or lock_waits(inline_worker) > 0,
            timeout_s=10,
            what="the second check to reach the batch row",
        )
        one.commit()
        other.join(timeout=10)
        two.commit()

    assert len(from_one) == 1
    assert batch_announcements(inline_worker, batch_id) == 1


async def test_batch_left_unannounced_by_a_crash_after_the_final_commit_is_announced_by_the_sweeper(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, settings: Settings
) -> None:
    batch_id, first, second = await two_job_batch(api_client, inline_worker)
    now = datetime.now(UTC)
    with inline_worker.sessions() as session:
        finish(session, first, now)
        finish(session, second, now)
        session.commit()  # and the worker dies before its batch check
    clock = SqlClock(inline_worker.engine.dialect.name)
    keys = Keys(settings.redis_prefix)
    broker = queue.build_broker(settings.redis_url or "", keys, max_connections=4, timeout_s=5)

    try:
        sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=0)
        announced_once = batch_announcements(inline_worker, batch_id)
        sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=0)
    finally:
        broker.close()

    assert announced_once == 1
    assert batch_announcements(inline_worker, batch_id) == 1
    batch = (await api_client.get(f"/v1/batches/{batch_id}")).json()
    assert batch["status"] == "completed"
