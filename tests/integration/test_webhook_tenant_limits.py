"""One tenant's webhooks against the others': the per-tenant cap on attempts in flight, the
per-tenant share of DNS lookup slots, and the rate limit on hand-made retries.

Real SQL (SQLite and Postgres), Redis, Dramatiq and HTTP: jobs are submitted through the API in
this process and run by the real executor (`inline_worker`), which writes the outbox rows;
their deliveries then go through the broker to a Dramatiq worker in this process running the
real `deliver_webhook` actor, as a worker process's webhook threads do. The receiver is a
local HTTP server that holds a slow tenant's requests until the test releases them and counts
how many it holds at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from typing import Any

import dramatiq
import httpx
import pytest
import redis
from sqlalchemy import func, select, text

from core import queue
from core.redis.keys import WEBHOOK_MANUAL_RETRY_WINDOW_S, Keys
from core.settings import Settings
from core.store.models import Tenant, WebhookAttempt, WebhookDelivery
from core.webhooks import sender as sender_module
from core.webhooks.delivery import WebhookDeliverer
from core.webhooks.fairness import AttemptSlots
from core.webhooks.outbox import tenant_secret
from core.webhooks.sender import WebhookSender
from core.webhooks.signing import new_secret, webhook_headers
from core.webhooks.ssrf import IPAddress, UrlPolicy
from tests.api_calls import job_body, submit
from tests.conftest import InlineWorker, in_process_api
from tests.processes import wait_until, waking_queues
from workers.actors import declare_webhook_actor

DEVELOPMENT = UrlPolicy(allow_private=True, allow_http=True)
CAP = 2
WEBHOOK_THREADS = 4
SLOW_DELIVERIES = 12
# Longer than any hold in these tests: an attempt ends because the receiver answered.
ATTEMPT_TIMEOUT_S = 30.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receiver listens on 127.0.0.1, so this API accepts http:// and private webhook URLs."""
    return settings.model_copy(update={"webhook_allow_private": True})


# --- A receiver that holds the slow tenant's requests -------------------------------------------


@dataclass
class HoldingReceiver:
    """`/slow/...` is held until `release` is set; anything else is answered 200 at once."""

    port: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: dict[str, list[str]] = field(default_factory=dict)  # "slow"/"fast" -> webhook ids
    holding: int = 0
    most_held: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def arrived(self, kind: str) -> list[str]:
        with self.lock:
            return list(self.arrivals.get(kind, []))

    def held(self) -> int:
        with self.lock:
            return self.holding


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    receiver: HoldingReceiver

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what arrived from the receiver."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        kind = "slow" if self.path.startswith("/slow/") else "fast"
        receiver = self.receiver
        with receiver.lock:
            receiver.arrivals.setdefault(kind, []).append(self.headers.get("webhook-id", ""))
            if kind == "slow":
                receiver.holding += 1
                receiver.most_held = max(receiver.most_held, receiver.holding)
        if kind == "slow":
            receiver.release.wait(ATTEMPT_TIMEOUT_S)
            with receiver.lock:
                receiver.holding -= 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[HoldingReceiver]:
    running = HoldingReceiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"receiver": running}))
    server.daemon_threads = True
    running.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- Webhook threads as a worker process runs them -----------------------------------------------


@dataclass
class WebhookThreads:
    broker: Any
    deliverer: WebhookDeliverer

    def dispatch(self, delivery_ids: Sequence[str]) -> None:
        queue.dispatch_deliveries(self.broker, delivery_ids)


@pytest.fixture
def webhook_threads(settings: Settings, inline_worker: InlineWorker) -> Iterator[WebhookThreads]:
    """The real `deliver_webhook` actor on WEBHOOK_THREADS Dramatiq threads, with a deliverer
    wired as `workers/composition.py` wires it (a tenant has at most CAP attempts in flight)."""
    broker = queue.build_broker(
        settings.redis_url or "", Keys(settings.redis_prefix), max_connections=16, timeout_s=5
    )
    sender = WebhookSender(DEVELOPMENT, timeout_s=ATTEMPT_TIMEOUT_S, max_connections=WEBHOOK_THREADS + 8)
    deliverer = WebhookDeliverer(
        sessions=inline_worker.sessions,
        sender=sender,
        schedule_s=[0.0, 1.0, 1.0],
        disable_after_s=3600,
        attempt_timeout_s=ATTEMPT_TIMEOUT_S,
        utcnow=lambda: datetime.now(UTC),
        attempt_slots=AttemptSlots(CAP),
    )
    declare_webhook_actor(broker, deliverer, time_limit_s=ATTEMPT_TIMEOUT_S * 3)
    worker = dramatiq.Worker(
        broker, queues={queue.DELIVER_WEBHOOK.queue_name}, worker_threads=WEBHOOK_THREADS, worker_timeout=100
    )
    worker.start()
    try:
        yield WebhookThreads(broker, deliverer)
    finally:
        with waking_queues({settings.redis_url or "": {broker.namespace}}):
            worker.stop(timeout=10_000)
        sender.close()
        broker.close()


async def jobs_with_webhooks(
    client: httpx.AsyncClient, worker: InlineWorker, urls: Sequence[str]
) -> list[str]:
    """One finished job per URL; the ids of the deliveries they wrote, in order."""
    before = len(worker.deliveries)
    for url in urls:
        job = await submit(client, webhook_url=url)
        worker.run(job["id"])
    return worker.deliveries[before:]


def deliveries(worker: InlineWorker, ids: Sequence[str]) -> list[WebhookDelivery]:
    with worker.sessions() as session:
        return list(session.execute(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids))).scalars())


def attempts_logged(worker: InlineWorker, ids: Sequence[str]) -> int:
    with worker.sessions() as session:
        stmt = select(func.count()).select_from(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids))
        return session.execute(stmt).scalar_one()


# --- The cap on attempts in flight ----------------------------------------------------------------


async def test_a_slow_tenant_holds_at_most_its_cap_of_threads_and_another_tenants_webhook_arrives_at_once(
    api_client: httpx.AsyncClient,
    settings: Settings,
    make_key: Any,
    inline_worker: InlineWorker,
    receiver: HoldingReceiver,
    webhook_threads: WebhookThreads,
) -> None:
    slow_ids = await jobs_with_webhooks(
        api_client, inline_worker, [receiver.url(f"/slow/{n}") for n in range(SLOW_DELIVERIES)]
    )
    async with in_process_api(settings, make_key("tenant-b")) as tenant_b:
        [fast_id] = await jobs_with_webhooks(tenant_b, inline_worker, [receiver.url("/fast")])

    # Tenant A's twelve ahead of B's one in the queue, with more than enough to fill every thread.
    webhook_threads.dispatch(slow_ids)
    webhook_threads.dispatch([fast_id])

    wait_until(lambda: len(receiver.arrived("fast")) == 1, timeout_s=10, what="tenant B's webhook")
    held_while_b_arrived = receiver.held()
    receiver.release.set()  # tenant A's endpoint answers from now on
    wait_until(
        lambda: all(d.status == "delivered" for d in deliveries(inline_worker, slow_ids)),
        timeout_s=60,
        what="every one of tenant A's deliveries",
    )

    assert held_while_b_arrived == CAP
    assert receiver.most_held == CAP
    # Nothing of A's lost or doubled, and waiting for a slot was never counted as an attempt.
    assert sorted(receiver.arrived("slow")) == sorted(
        d.webhook_id for d in deliveries(inline_worker, slow_ids)
    )
    assert [d.attempt_count for d in deliveries(inline_worker, slow_ids)] == [1] * SLOW_DELIVERIES
    assert attempts_logged(inline_worker, slow_ids) == SLOW_DELIVERIES
    assert [d.status for d in deliveries(inline_worker, [fast_id])] == ["delivered"]


# --- The share of DNS lookup slots --------------------------------------------------------------


def test_a_tenant_whose_dns_hangs_holds_only_its_share_of_lookup_slots_and_another_tenant_still_resolves(
    receiver: HoldingReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "MAX_DNS_LOOKUPS", 4)
    release = threading.Event()

    def resolver(host: str, port: int) -> Sequence[IPAddress]:
        if host.startswith("hanging-"):
            release.wait(30)  # tenant A's name servers never answer
        return [ip_address("127.0.0.1")]

    def signed() -> dict[str, str]:
        return webhook_headers([new_secret()], "msg_dns", int(time.time()), b"{}")

    hanging = [f"http://hanging-{n}.test:{receiver.port}/fast" for n in range(4)]
    try:
        with WebhookSender(DEVELOPMENT, timeout_s=0.3, resolver=resolver, dns_lookups_per_tenant=2) as sender:
            a_outcomes = [sender.send(url, b"{}", signed(), tenant_id="tenant-a") for url in hanging]
            started = time.monotonic()
            b_outcome = sender.send(
                f"http://b.test:{receiver.port}/fast", b"{}", signed(), tenant_id="tenant-b"
            )
            b_took_s = time.monotonic() - started
    finally:
        release.set()

    assert [o.error for o in a_outcomes] == ["timeout (connect)"] * 4
    assert (b_outcome.success, b_outcome.status_code) == (True, 200)
    assert b_took_s < 0.3
    assert len(receiver.arrived("fast")) == 1


# --- The rate limit on hand-made retries ----------------------------------------------------------


async def pending_delivery(client: httpx.AsyncClient) -> str:
    """A cancelled job's pending delivery (to a public host: nothing is sent from these tests)."""
    job = (await client.post("/v1/jobs", json=job_body(webhook_url="https://hooks.example.com/x"))).json()
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    [delivery] = (await client.get(f"/v1/jobs/{job['id']}/deliveries")).json()["data"]
    delivery_id: str = delivery["id"]
    return delivery_id


async def test_the_eleventh_hand_retry_in_a_minute_is_refused_429_with_retry_after_and_other_tenants_are_not(
    api_client: httpx.AsyncClient,
    settings: Settings,
    make_key: Any,
    redis_client: redis.Redis,
) -> None:
    limit = settings.webhook_manual_retries_per_minute
    mine = await pending_delivery(api_client)
    async with in_process_api(settings, make_key("tenant-b")) as tenant_b:
        theirs = await pending_delivery(tenant_b)

        allowed = [await api_client.post(f"/v1/webhook-deliveries/{mine}/retry") for _ in range(limit)]
        refused = await api_client.post(f"/v1/webhook-deliveries/{mine}/retry")
        other_tenant = await tenant_b.post(f"/v1/webhook-deliveries/{theirs}/retry")

    assert limit == 10
    assert Counter(r.status_code for r in allowed) == {202: limit}
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= WEBHOOK_MANUAL_RETRY_WINDOW_S
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert "10 webhook delivery retries" in error["message"]
    assert other_tenant.status_code == 202
    # Each tenant's count expires with its window: it can never refuse a tenant for good.
    counters = list(redis_client.scan_iter(Keys(settings.redis_prefix).webhook_manual_retries("*")))
    assert len(counters) == 2
    assert all(0 < redis_client.pttl(c) <= WEBHOOK_MANUAL_RETRY_WINDOW_S * 1000 for c in counters)


async def test_a_refused_retry_sends_nothing(
    api_client: httpx.AsyncClient, settings: Settings, redis_client: redis.Redis
) -> None:
    delivery_id = await pending_delivery(api_client)
    for _ in range(settings.webhook_manual_retries_per_minute):
        await api_client.post(f"/v1/webhook-deliveries/{delivery_id}/retry")
    messages = f"{Keys(settings.redis_prefix).broker_namespace}:{queue.DELIVER_WEBHOOK.queue_name}.msgs"
    redis_client.hdel(messages, delivery_id)

    refused = await api_client.post(f"/v1/webhook-deliveries/{delivery_id}/retry")

    assert refused.status_code == 429
    assert not redis_client.hexists(messages, delivery_id)


# --- The tenant's signing secret, made by its first deliveries at once ------------------------------


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_tenants_first_two_deliveries_claimed_at_once_share_the_one_signing_secret_they_create(
    inline_worker: InlineWorker, make_key: Any
) -> None:
    make_key("tenant-a")
    with inline_worker.sessions() as session:
        tenant_id = session.execute(select(Tenant.id).where(Tenant.name == "tenant-a")).scalar_one()
    now = datetime.now(UTC)
    secrets: list[str] = []

    with inline_worker.sessions() as one, inline_worker.sessions() as two:
        secrets.append(tenant_secret(one, tenant_id, now).secret)  # inserted, not yet committed
        other = threading.Thread(target=lambda: secrets.append(tenant_secret(two, tenant_id, now).secret))
        other.start()  # its insert waits on the first one's row
        wait_until(
            lambda: not other.is_alive() or lock_waits(inline_worker) > 0,
            timeout_s=10,
            what="the second insert to wait on the first",
        )
        one.commit()
        other.join(timeout=10)
        two.commit()

    assert len(secrets) == 2
    assert secrets[0] == secrets[1]


def lock_waits(worker: InlineWorker) -> int:
    """Postgres backends of this database waiting for a lock."""
    with worker.sessions() as session:
        stmt = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(session.execute(stmt).scalar_one())
