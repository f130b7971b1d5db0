"""Webhooks end to end: real API and worker processes on Postgres, the simulated upstream, and a
receiver process that verifies every request with `standardwebhooks` (tests/webhook_receiver.py).

The fleet allows private addresses (the receivers listen on 127.0.0.1), retries on a short
schedule and gives each attempt 2 s. Also here: the receiver's own refusals (a tampered body,
an old timestamp) and the chatbot example's receiver (examples/chatbot_webhook/receiver.py).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from core.settings import Settings
from core.store.db import make_sync_engine
from core.webhooks.signing import new_secret, webhook_headers
from jobgate.children import free_port
from tests.fleet import Fleet, run_fleet, sim_provider
from tests.processes import PROJECT_ROOT, ServiceProcess, jobgate_env
from tests.sim_process import SimHandle
from tests.webhook_receiver import ReceiverHandle, run_receiver

pytestmark = pytest.mark.e2e

SCHEDULE_S = "0,1,1,2,2,4,4,8"
ATTEMPT_TIMEOUT_S = 2
WEBHOOK_THREADS = 16  # workers/process.py's default
FAIL_FIRST_S = 5.0
UPSTREAM_LATENCY_MS = 400
EXAMPLE = PROJECT_ROOT / "examples" / "chatbot_webhook" / "receiver.py"


@pytest.fixture(scope="module")
def shared_fleet(sim: SimHandle) -> Iterator[Fleet]:
    """One fleet for the module: alias `fast` answers at once, `slow` after UPSTREAM_LATENCY_MS
    (upstream models of this module's own); each test works as a tenant of its own."""
    tag = uuid.uuid4().hex[:8]
    sim.configure(models={f"hooks-slow-{tag}": {"latency_ms": UPSTREAM_LATENCY_MS}})
    config = {
        "providers": {"sim": sim_provider(sim)},
        "models": {
            "fast": {"targets": [{"provider": "sim", "model": f"hooks-fast-{tag}"}]},
            "slow": {"targets": [{"provider": "sim", "model": f"hooks-slow-{tag}"}]},
        },
        "cache": {"default": False, "ttl_s": 60},
    }
    settings = {
        "webhook_allow_private": "true",
        "webhook_retry_schedule_s": SCHEDULE_S,
        "webhook_timeout_s": str(ATTEMPT_TIMEOUT_S),
    }
    with run_fleet(
        sim=sim, config=config, workers=2, threads=16, max_in_flight=16, settings=settings
    ) as deployment:
        yield deployment


@pytest.fixture
def fleet(shared_fleet: Fleet, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """The module's fleet, through a key of a tenant of this test's own."""
    with shared_fleet.as_tenant(f"tenant-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}") as view:
        yield view


def batch_requests(count: int, tag: str, model: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "body": {"model": model, "messages": [{"role": "user", "content": f"{tag} question {i}"}]},
        }
        for i in range(count)
    ]


def submit_batch(
    fleet: Fleet, count: int, tag: str, webhook_url: str | None = None, *, model: str = "fast"
) -> str:
    body: dict[str, Any] = {"requests": batch_requests(count, tag, model)}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    response = fleet.http.post("/v1/batches", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def run_batch(fleet: Fleet, count: int, tag: str, webhook_url: str | None = None) -> float:
    """Seconds from the start of POST /v1/batches until every job of the `slow` batch is final."""
    started = time.monotonic()
    batch_id = submit_batch(fleet, count, tag, webhook_url, model="slow")
    fleet.wait_for_batch(batch_id, timeout_s=120, interval_s=0.05)
    return time.monotonic() - started


def delivery_counts(fleet: Fleet, batch_id: str) -> dict[str, int]:
    """Deliveries per status of the batch's tenant (the test's own), straight from the fleet's
    database."""
    engine = make_sync_engine(Settings(database_url=fleet.database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT status, count(*) FROM webhook_deliveries WHERE tenant_id ="
                    " (SELECT tenant_id FROM batches WHERE id = :batch_id) GROUP BY status"
                ),
                {"batch_id": batch_id},
            ).all()
    finally:
        engine.dispose()
    return {status: int(count) for status, count in rows}


def test_every_event_of_500_batch_jobs_arrives_verified_though_the_receiver_fails_its_first_seconds(
    fleet: Fleet,
) -> None:
    secret = fleet.http.get("/v1/webhook-secret").json()["secret"]
    jobs = 500
    with run_receiver(secrets=[secret], fail_first_s=FAIL_FIRST_S) as receiver:
        batch_id = submit_batch(fleet, jobs, "chat", webhook_url=f"{receiver.url}/events")
        fleet.wait_for_batch(batch_id, timeout_s=90)

        def all_delivered(records: list[dict[str, Any]]) -> bool:
            ok = [r for r in records if r["status"] == 200]
            done = {r["data_id"] for r in ok if r["type"] == "job.succeeded"}
            return len(done) == jobs and any(r["type"] == "batch.completed" for r in ok)

        records = receiver.wait_for(all_delivered, timeout_s=90, what=f"{jobs} jobs' events and the batch's")
    job_ids = {job["id"] for job in fleet.batch_jobs(batch_id)}

    # The receiver failed at first, so the events of the first jobs took several attempts...
    refused = [r for r in records if r["status"] == 500]
    assert refused
    retried_job = next(r["data_id"] for r in refused if r["type"] == "job.succeeded")
    [logged] = fleet.http.get(f"/v1/jobs/{retried_job}/deliveries").json()["data"]
    assert logged["status"] == "delivered"
    codes = [a["status_code"] for a in logged["attempts"]]
    assert codes[-1] == 200 and len(codes) >= 2 and set(codes[:-1]) == {500}
    # ...yet every request was signed right, and every job's event arrived: none lost.
    assert all(r["verified"] is True for r in records)
    delivered = [r for r in records if r["status"] == 200]
    job_events = [r for r in delivered if r["type"] == "job.succeeded"]
    assert {r["data_id"] for r in job_events} == job_ids
    # A job's attempts (and duplicates, if any) all carry that job's one webhook-id.
    ids_per_job: dict[str, set[str]] = defaultdict(set)
    jobs_per_id: dict[str, set[str]] = defaultdict(set)
    for record in records:
        ids_per_job[record["data_id"]].add(record["webhook_id"])
        jobs_per_id[record["webhook_id"]].add(record["data_id"])
    assert all(len(ids) == 1 for ids in ids_per_job.values())
    assert all(len(ids) == 1 for ids in jobs_per_id.values())
    # The batch's completion was announced once.
    completions = [r for r in delivered if r["type"] == "batch.completed"]
    assert [r["data_id"] for r in completions] == [batch_id]
    assert len({r["webhook_id"] for r in records if r["type"] == "batch.completed"}) == 1
    # SQL agrees: every delivery delivered, none pending or failed.
    assert delivery_counts(fleet, batch_id) == {"delivered": jobs + 1}


def test_a_receiver_that_never_answers_does_not_slow_a_1000_job_batch(fleet: Fleet) -> None:
    """A batch with every webhook hanging vs the same batch without webhooks, side by side.

    The upstream answers in UPSTREAM_LATENCY_MS, as a provider would, and each worker process
    keeps 16 jobs in flight: that bound, not this 2-core machine's CPU, sets the pace, so the
    ratio shows whether hanging deliveries hold up jobs (coupled, it would be ~5: each job's
    slot held 2 s more). At zero latency
    the comparison measures the CPU an event costs (its outbox row, message and attempts,
    ~2 ms per job) on a machine that workers, Postgres and the API saturate together.
    """
    jobs = 1000
    run_batch(fleet, 100, "warm-up")
    with run_receiver(mode="hang") as receiver:
        without_webhooks_s = run_batch(fleet, jobs, "plain")
        with_webhooks_s = run_batch(fleet, jobs, "hooked", webhook_url=f"{receiver.url}/hang")
        # Every webhook thread of both workers is (or was) stuck on the receiver meanwhile.
        held = receiver.wait_for(
            lambda records: len(records) >= 2 * WEBHOOK_THREADS,
            timeout_s=30,
            what="both workers' webhook threads to be held by the receiver",
        )

    ratio = with_webhooks_s / without_webhooks_s
    print(
        f"\n{jobs}-job batch at {UPSTREAM_LATENCY_MS} ms upstream latency: {without_webhooks_s:.2f} s "
        f"without webhooks, {with_webhooks_s:.2f} s with every webhook hanging (ratio {ratio:.2f})"
    )
    assert ratio <= 1.25
    assert all(r["status"] is None for r in held)  # never answered


def test_receiver_accepts_a_signed_delivery_and_refuses_a_tampered_body_or_an_old_timestamp() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded","timestamp":"2026-11-25T10:00:00.000Z","data":{"id":"job_1"}}'
    now_s = int(time.time())
    with run_receiver(secrets=[secret]) as receiver:
        answers = {
            "signed": post(receiver, body, webhook_headers([secret], "msg_1", now_s, body)),
            "tampered body": post(
                receiver,
                body.replace(b"job_1", b"job_2"),
                webhook_headers([secret], "msg_2", now_s, body),
            ),
            "old timestamp": post(receiver, body, webhook_headers([secret], "msg_3", now_s - 600, body)),
            "another secret": post(receiver, body, webhook_headers([new_secret()], "msg_4", now_s, body)),
            "unsigned": post(receiver, body, {"content-type": "application/json"}),
        }
        records = {r["webhook_id"]: r for r in receiver.requests()}

    assert answers == {
        "signed": 200,
        "tampered body": 400,
        "old timestamp": 400,
        "another secret": 400,
        "unsigned": 400,
    }
    assert records["msg_1"]["verified"] is True
    assert "No matching signature" in records["msg_2"]["error"]
    assert "too old" in records["msg_3"]["error"]
    assert "No matching signature" in records["msg_4"]["error"]
    assert "Missing required headers" in records[None]["error"]


def post(receiver: ReceiverHandle, body: bytes, headers: dict[str, str]) -> int:
    return httpx.post(f"{receiver.url}/hook", content=body, headers=headers, timeout=10).status_code


# --- The chatbot example ----------------------------------------------------------------------


def succeeded_event(answer: str, conversation_id: str) -> bytes:
    job = {
        "id": "job_example",
        "object": "job",
        "status": "succeeded",
        "metadata": {"conversation_id": conversation_id},
        "result": {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
        },
        "error": None,
    }
    event = {"type": "job.succeeded", "timestamp": datetime.now(UTC).isoformat(), "data": job}
    return httpx.Request("POST", "http://x", json=event).content


def test_chatbot_example_prints_the_answer_of_a_signed_delivery_once_and_refuses_a_bad_signature(
    tmp_path: Path,
) -> None:
    secret = new_secret()
    port = free_port()
    env = {**jobgate_env(), "JOBGATE_WEBHOOK_SECRET": secret}
    example = ServiceProcess.start(
        "chatbot-example", [sys.executable, str(EXAMPLE), "--port", str(port)], env
    )
    try:
        example.wait_for_line("listening on", timeout_s=15)
        url = f"http://127.0.0.1:{port}/jobgate"
        body = succeeded_event("We open at nine.", "c-42")
        headers = webhook_headers([secret], "msg_example", int(time.time()), body)

        forged = httpx.post(url, content=body, headers=webhook_headers([new_secret()], "msg_x", 1, body))
        delivered = httpx.post(url, content=body, headers=headers)
        retried = httpx.post(url, content=body, headers=headers)
        line = example.wait_for_line("assistant:", timeout_s=10)
    finally:
        example.stop(grace_s=5)

    assert forged.status_code == 400
    assert delivered.status_code == 204
    assert retried.status_code == 204
    assert line == "[c-42] assistant: We open at nine."
    assert [out for out in example.lines if "assistant:" in out] == [line]  # the retry was a duplicate
