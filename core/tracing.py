"""Traces: OpenTelemetry spans of a job's life, joined into one trace by the job.

The spans: the API request (a SERVER span, continuing the caller's W3C `traceparent` if it
sent one); then, on whichever process runs the job, the queue wait (from the message's
enqueue, or its due time when it was delayed, to the claim that took it), the claim, each
upstream attempt (`chat <model>`: provider, model, outcome, HTTP status, latency), the final
write, and each delivery of the job's webhook. The sync path has no queue wait or claim: its
request inserts the job already claimed.

The trace context is kept on the job's row (`jobs.traceparent`, written by the submitting
request), not in the Dramatiq message: a message does not survive every re-dispatch. The
sweeper re-dispatches a queued job whose message was lost from SQL alone, the reaper
re-queues a running job whose worker died, and a runtime re-queues a job it must delay;
none of them holds the message it replaces, but every message names its job and every claim
reads its row. The message gives only its own enqueue time. The jobs of a batch share the
batch request's trace (sample batches whole with `OTEL_TRACES_SAMPLER`). A webhook delivery
joins its job's trace; a batch's event has no job and no span.

Off by default. With `JOBGATE_OTEL_ENABLED=true` a process exports over OTLP/HTTP, set up
by the standard variables the SDK reads: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_...`;
default http://localhost:4318), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER`. Off, each instrumented point costs one boolean check (`enabled()`):
no span object is made, no context is read, written or parsed, the SDK is not imported.

Process-wide, like logging's configuration (OpenTelemetry's tracer provider is itself one per
process): each composition root calls `configure` once; tests `install` a provider of their own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from core.domain.chat import Completion
from core.errors import UpstreamError
from core.settings import Settings

QUEUE_WAIT = "jobgate.queue_wait"
CLAIM = "jobgate.claim"
FINAL_WRITE = "jobgate.final_write"
WEBHOOK_DELIVERY = "jobgate.webhook_delivery"
# An upstream attempt is `chat <model>`, as OpenTelemetry's GenAI conventions name a call.
ATTEMPT_PREFIX = "chat "

_PROPAGATOR = TraceContextTextMapPropagator()


class _Tracing:
    """The process's tracer: None while traces are off."""

    tracer: Tracer | None = None


_TRACING = _Tracing()


def enabled() -> bool:
    """The one check the hot path makes before any tracing work."""
    return _TRACING.tracer is not None


def configure(settings: Settings, service_name: str) -> None:
    """Turn traces on for this process when the settings ask for it, exporting over OTLP/HTTP;
    a provider already installed (a test's, an earlier call's) is kept."""
    if not settings.otel_enabled or enabled():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    # `OTEL_SERVICE_NAME` wins; without it the SDK says "unknown_service".
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    # Batched export on the SDK's own thread; spans left at exit are flushed (shutdown_on_exit).
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)


def install(provider: TracerProvider) -> None:
    """Trace through `provider` from now on (tests: one with an in-memory exporter)."""
    _TRACING.tracer = provider.get_tracer("jobgate")


def disable() -> None:
    """Traces off again (tests)."""
    _TRACING.tracer = None


# --- Carrying the context ----------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to store on the jobs a request makes; None
    when traces are off or no span is current."""
    if _TRACING.tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _context_of(traceparent: str) -> Context:
    return _PROPAGATOR.extract({"traceparent": traceparent})


def enter_trace(traceparent: str | None) -> None:
    """Make the job's trace the parent of the spans this task starts from now on. Each job
    runs as a task of its own, whose context ends with it: nothing needs detaching."""
    if _TRACING.tracer is not None and traceparent is not None:
        otel_context.attach(_context_of(traceparent))


# --- Spans -------------------------------------------------------------------------------------


@contextmanager
def server_span(method: str, path: str, headers: Mapping[str, str]) -> Iterator[Span]:
    """The current span for one HTTP request, child of the caller's `traceparent` if any; the
    caller names it by its route and sets its status once the route has answered."""
    tracer = _TRACING.tracer
    assert tracer is not None, "server_span is only used while traces are on"
    attributes = {"http.request.method": method, "url.path": path}
    with tracer.start_as_current_span(
        method, context=_PROPAGATOR.extract(headers), kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def record_span(
    name: str,
    traceparent: str | None,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> None:
    """A finished span in `traceparent`'s trace, for work timed before its trace was known (a
    claim returns the rows' trace contexts) or shared by a group of jobs (each job's trace
    gets one with the group's times). Nothing without a trace context."""
    tracer = _TRACING.tracer
    if tracer is None or traceparent is None:
        return
    span = tracer.start_span(
        name, context=_context_of(traceparent), kind=kind, attributes=attributes, start_time=start_ns
    )
    span.end(end_time=end_ns)


def record_claim(
    traceparent: str | None,
    *,
    job_id: str,
    attempt: int,
    due_ms: int | None,
    started_ns: int,
    ended_ns: int,
    group_size: int,
) -> None:
    """The job's queue wait (from its message's due time, when the hand-off knew it, to the
    claim) and its claim (one statement for the group)."""
    job: dict[str, AttributeValue] = {"jobgate.job_id": job_id, "jobgate.attempt": attempt}
    if due_ms is not None:
        record_span(QUEUE_WAIT, traceparent, min(due_ms * 1_000_000, started_ns), started_ns, job)
    record_span(CLAIM, traceparent, started_ns, ended_ns, {**job, "jobgate.group_size": group_size})


def record_delivery(
    traceparent: str | None,
    *,
    delivery_id: str,
    job_id: str | None,
    event_type: str,
    attempt: int,
    outcome: str,
    status_code: int | None,
    started_ns: int,
) -> None:
    """One webhook delivery attempt (from its signing to its recorded outcome), ending now."""
    attributes: dict[str, AttributeValue] = {
        "jobgate.delivery_id": delivery_id,
        "jobgate.job_id": job_id or "",
        "jobgate.event_type": event_type,
        "jobgate.attempt": attempt,
        "jobgate.outcome": outcome,
    }
    if status_code is not None:
        attributes["http.response.status_code"] = status_code
    ended_ns = time.time_ns()
    record_span(WEBHOOK_DELIVERY, traceparent, started_ns, ended_ns, attributes, kind=SpanKind.CLIENT)


async def traced_attempt(call: Awaitable[Completion], *, provider: str, model: str) -> Completion:
    """Await one upstream call inside its CLIENT span (child of the job's trace, entered by the
    job's task): provider, model, outcome, the HTTP status of a failure, latency, tokens. A job
    submitted while traces were off has no trace, and its calls no span."""
    tracer = _TRACING.tracer
    assert tracer is not None, "traced_attempt is only used while traces are on"
    if not get_current_span().get_span_context().is_valid:
        return await call
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "jobgate.provider": provider,
    }
    t0 = time.monotonic()
    with tracer.start_as_current_span(
        ATTEMPT_PREFIX + model,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            completion = await call
        except UpstreamError as exc:
            span.set_attributes(_ended(t0, exc.error_type))
            if exc.status_code is not None:
                span.set_attribute("http.response.status_code", exc.status_code)
            span.set_status(Status(StatusCode.ERROR, exc.error_type))
            raise
        except BaseException as exc:
            span.set_attributes(_ended(t0, type(exc).__name__))
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        span.set_attributes(_ended(t0, "succeeded"))
        span.set_attribute("gen_ai.usage.input_tokens", completion.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", completion.output_tokens)
        span.set_status(Status(StatusCode.OK))
        return completion


def _ended(t0: float, outcome: str) -> dict[str, AttributeValue]:
    return {"jobgate.outcome": outcome, "jobgate.latency_ms": int((time.monotonic() - t0) * 1000)}
