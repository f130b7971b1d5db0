"""Traces (core/tracing.py): one job's spans, from the API request to its webhook, in one trace.

The API runs in this process, and so does a worker built as `python -m workers` builds one
(`workers.composition.compose`, the Dramatiq actors, consumer threads for the job and webhook
queues), over real Redis, SQLite and the sim; the webhook goes to a receiver process. Spans are
read from the SDK's in-memory exporter. With traces off, the same path must make no span and
do no context propagation at all (the worker's hot path is benchmarked).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import httpx
import pytest
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import select

from core import queue, tracing
from core.services.runtime import LoopThread
from core.settings import Settings
from core.store.models import Job
from tests.api_calls import submit
from tests.conftest import in_process_api, sqlite_only
from tests.processes import waking_queues
from tests.webhook_receiver import ReceiverHandle, run_receiver
from workers.actors import declare_actors, hand_offs
from workers.composition import WorkerComponents, compose

pytestmark = sqlite_only

CALLER_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"
JOB_SPANS = (tracing.QUEUE_WAIT, tracing.CLAIM, tracing.FINAL_WRITE, tracing.WEBHOOK_DELIVERY)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receiver listens on 127.0.0.1: webhooks may go to http:// and private addresses."""
    return settings.model_copy(update={"webhook_allow_private": True})


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Traces on, into memory, for this test (as `configure` would, with another exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
def receiver() -> Iterator[ReceiverHandle]:
    with run_receiver() as handle:
        yield handle


@dataclass
class InProcessWorker:
    parts: WorkerComponents
    consumers: list[dramatiq.Worker]

    def start(self) -> None:
        for consumer in self.consumers:
            consumer.start()


@pytest.fixture
def make_worker(settings: Settings) -> Iterator[Callable[[], InProcessWorker]]:
    """`make_worker()`: a worker process's parts and actors in this process, built then (so
    after the test chose traces on or off); its consumers run once `start()`ed."""
    made: list[tuple[InProcessWorker, LoopThread]] = []

    def make() -> InProcessWorker:
        parts = compose(settings, threads=2, webhook_threads=2, max_in_flight=10)
        loop = LoopThread("traces-worker")
        loop.run(parts.jobs.runtime.start())
        declare_actors(parts.broker, hand_offs(parts.jobs.runtime, 10), parts.deliverer, time_limit_s=60)
        names = [spec.queue_name for spec in (queue.RUN_INTERACTIVE, queue.RUN_BATCH, queue.DELIVER_WEBHOOK)]
        consumers = [
            dramatiq.Worker(parts.broker, queues={name}, worker_threads=2, worker_timeout=100)
            for name in names
        ]
        worker = InProcessWorker(parts, consumers)
        made.append((worker, loop))
        return worker

    yield make
    for worker, loop in made:
        assert settings.redis_url is not None
        with waking_queues({settings.redis_url: {worker.parts.broker.namespace}}):
            for consumer in worker.consumers:
                consumer.stop(timeout=5_000)
        loop.run(worker.parts.jobs.runtime.stop(grace_s=5))
        loop.run(worker.parts.jobs.aclose())
        loop.stop()
        worker.parts.sender.close()
        worker.parts.broker.close()
        worker.parts.engine.dispose()


async def job_done_and_delivered(
    client: httpx.AsyncClient, job_id: str, receiver: ReceiverHandle, timeout_s: float = 30
) -> dict[str, Any]:
    """The job once final and its webhook delivered (with the delivery's outcome recorded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        deliveries = (await client.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]
        if job["status"] == "succeeded" and [d["status"] for d in deliveries] == ["delivered"]:
            assert len(receiver.delivered()) == 1
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} not done and delivered within {timeout_s} s")


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    """The finished spans of one trace by name (each name once)."""
    found = [
        s for s in exporter.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id
    ]
    by_name = {span.name: span for span in found}
    assert len(by_name) == len(found), sorted(span.name for span in found)
    return by_name


async def wait_for_span(exporter: InMemorySpanExporter, name: str, timeout_s: float = 10) -> None:
    """The delivery's span ends once its outcome is recorded, just after the API can see it."""
    deadline = time.monotonic() + timeout_s
    while not any(span.name == name for span in exporter.get_finished_spans()):
        assert time.monotonic() < deadline, f"no {name} span within {timeout_s} s"
        await asyncio.sleep(0.02)


def stored_traceparent(worker: InProcessWorker, job_id: str) -> str | None:
    with worker.parts.sessions() as session:
        value: str | None = session.scalar(select(Job.traceparent).where(Job.id == job_id))
        return value


async def test_one_jobs_spans_from_request_to_webhook_share_the_callers_trace_and_parent_on_the_request(
    settings: Settings,
    api_key: str,
    spans: InMemorySpanExporter,
    make_worker: Callable[[], InProcessWorker],
    receiver: ReceiverHandle,
    upstream_model: str,
) -> None:
    worker = make_worker()
    worker.start()
    async with in_process_api(settings, api_key) as client:
        response = await client.post(
            "/v1/jobs",
            json={
                "model": "fast",
                "messages": [{"role": "user", "content": "Where is my parcel?"}],
                "priority": "interactive",
                "webhook_url": f"{receiver.url}/chatbot",
            },
            headers={"traceparent": CALLER_TRACEPARENT},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        await job_done_and_delivered(client, job_id, receiver)
    await wait_for_span(spans, tracing.WEBHOOK_DELIVERY)

    trace = trace_of(spans, CALLER_TRACE_ID)
    attempt_name = tracing.ATTEMPT_PREFIX + upstream_model
    assert set(trace) == {"POST /v1/jobs", attempt_name, *JOB_SPANS}
    request = trace["POST /v1/jobs"]
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None and request.parent.span_id == CALLER_SPAN_ID
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 202
    assert request.context is not None
    for name in (attempt_name, *JOB_SPANS):
        parent = trace[name].parent
        assert parent is not None and parent.span_id == request.context.span_id, name
        assert (trace[name].attributes or {}).get("jobgate.job_id", job_id) == job_id, name

    attempt = trace[attempt_name]
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.attributes is not None
    assert attempt.attributes["jobgate.provider"] == "sim"
    assert attempt.attributes["gen_ai.request.model"] == upstream_model
    assert attempt.attributes["jobgate.outcome"] == "succeeded"
    output_tokens = attempt.attributes["gen_ai.usage.output_tokens"]
    assert isinstance(output_tokens, int) and output_tokens > 0
    assert (trace[tracing.FINAL_WRITE].attributes or {})["jobgate.outcome"] == "succeeded"
    delivery = trace[tracing.WEBHOOK_DELIVERY].attributes or {}
    assert (delivery["jobgate.outcome"], delivery["http.response.status_code"]) == ("delivered", 200)
    assert delivery["jobgate.event_type"] == "job.succeeded"

    # One after the other: waited, claimed, called, written, then delivered.
    order = [trace[name] for name in (tracing.QUEUE_WAIT, tracing.CLAIM, attempt_name, tracing.FINAL_WRITE)]
    order.append(trace[tracing.WEBHOOK_DELIVERY])
    assert request.start_time is not None and order[0].start_time is not None
    assert request.start_time <= order[0].start_time
    for earlier, later in itertools.pairwise(order):
        assert earlier.end_time is not None and later.start_time is not None
        assert earlier.end_time <= later.start_time, (earlier.name, later.name)
    assert stored_traceparent(worker, job_id) is not None


async def test_a_job_dispatched_again_from_its_row_alone_stays_in_its_requests_trace(
    settings: Settings,
    api_key: str,
    spans: InMemorySpanExporter,
    make_worker: Callable[[], InProcessWorker],
    receiver: ReceiverHandle,
) -> None:
    """As the sweeper re-dispatches a job whose message was lost: a new message, job id only."""
    worker = make_worker()
    async with in_process_api(settings, api_key) as client:
        job = await submit(client, priority="interactive", webhook_url=f"{receiver.url}/chatbot")
        worker.parts.broker.flush_all()  # the message is lost (Redis restarted)
        queue.dispatch_jobs(worker.parts.broker, [(job["id"], "interactive")])
        worker.start()
        await job_done_and_delivered(client, job["id"], receiver)
    await wait_for_span(spans, tracing.WEBHOOK_DELIVERY)

    [request] = [s for s in spans.get_finished_spans() if s.name == "POST /v1/jobs"]
    assert request.context is not None
    trace = trace_of(spans, request.context.trace_id)
    assert set(JOB_SPANS) <= set(trace)
    for name in JOB_SPANS:
        parent = trace[name].parent
        assert parent is not None and parent.span_id == request.context.span_id, name


async def test_a_sync_call_made_by_the_api_itself_traces_its_attempt_and_write_under_the_request(
    settings: Settings, api_key: str, spans: InMemorySpanExporter, upstream_model: str
) -> None:
    async with in_process_api(settings, api_key) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
        )
        assert response.status_code == 200, response.text

    [request] = [s for s in spans.get_finished_spans() if s.name == "POST /v1/chat/completions"]
    assert request.context is not None
    trace = trace_of(spans, request.context.trace_id)
    attempt_name = tracing.ATTEMPT_PREFIX + upstream_model
    assert set(trace) == {request.name, attempt_name, tracing.FINAL_WRITE}
    for name in (attempt_name, tracing.FINAL_WRITE):
        parent = trace[name].parent
        assert parent is not None and parent.span_id == request.context.span_id, name


async def test_with_traces_off_a_job_makes_no_span_and_propagates_no_context(
    settings: Settings,
    api_key: str,
    make_worker: Callable[[], InProcessWorker],
    receiver: ReceiverHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not settings.otel_enabled
    tracing.configure(settings, "jobgate-test")
    assert not tracing.enabled()
    calls: list[str] = []

    def spy(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        return counted

    for owner, attribute in (
        (sdk_trace.Span, "__init__"),
        (NonRecordingSpan, "__init__"),
        (TraceContextTextMapPropagator, "inject"),
        (TraceContextTextMapPropagator, "extract"),
    ):
        monkeypatch.setattr(owner, attribute, spy(f"{owner.__name__}.{attribute}", getattr(owner, attribute)))

    worker = make_worker()
    worker.start()
    async with in_process_api(settings, api_key) as client:
        job = await submit(client, priority="interactive", webhook_url=f"{receiver.url}/chatbot")
        await job_done_and_delivered(client, job["id"], receiver)

    assert calls == []
    assert stored_traceparent(worker, job["id"]) is None
    assert not any(type(m).__name__ == "CurrentMessage" for m in worker.parts.broker.middleware)
