"""Prometheus metrics: one place that names them all (CONTRACT.md: `jobgate_*`, no tenant or
job ids as labels).

Counters and histograms are per process and use prometheus-client's multiprocess mode, so
the API's `/metrics` (and `jobgate worker`'s own metrics port on other machines) adds up
every process on its machine; `PROMETHEUS_MULTIPROC_DIR` must be set before this module is
imported (`jobgate dev`, `jobgate api` and `jobgate worker` set it). The metric objects are
module-level by the library's design, the one kind of global state we keep. Fleet-wide
gauges (queue depth, oldest queued job, breaker state) are not here: they are computed from
Redis and SQL when `/metrics` is scraped (`api/metrics.py`).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

JOBS_SUBMITTED = Counter("jobgate_jobs_submitted_total", "Jobs accepted by the API", ["priority"])
JOBS_FINISHED = Counter("jobgate_jobs_finished_total", "Jobs that reached a final state", ["status"])
JOB_DURATION = Histogram(
    "jobgate_job_duration_seconds",
    "Time from submission to final state",
    ["priority"],
    buckets=LATENCY_BUCKETS_S,
)
UPSTREAM_REQUESTS = Counter(
    "jobgate_upstream_requests_total", "Calls to upstream providers", ["provider", "model", "outcome"]
)
UPSTREAM_LATENCY = Histogram(
    "jobgate_upstream_latency_seconds",
    "Upstream call latency",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS_S,
)
UPSTREAM_TOKENS = Counter(
    "jobgate_upstream_tokens_total", "Tokens reported by providers", ["provider", "model", "direction"]
)
COST_USD = Counter(
    "jobgate_cost_usd_total", "Cost of upstream calls in USD, from the pricing table", ["model"]
)
CACHE_LOOKUPS = Counter("jobgate_cache_lookups_total", "Response cache lookups", ["result"])
SINGLE_FLIGHT_COLLAPSES = Counter(
    "jobgate_single_flight_collapses_total", "Jobs answered by an identical request already in flight"
)
LIMITER_WAITS = Counter(
    "jobgate_limiter_waits_total", "Calls that waited briefly for rate-limit budget", ["provider"]
)
LIMITER_WAIT_SECONDS = Histogram(
    "jobgate_limiter_wait_seconds",
    "Time spent waiting for rate-limit budget before a call",
    ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
LIMITER_DELAYS = Counter(
    "jobgate_limiter_delays_total",
    "Jobs put back on the queue because budget or the breaker said wait",
    ["reason"],
)
BREAKER_OPENED = Counter(
    "jobgate_breaker_opened_total", "Times a target's breaker was seen opening", ["provider"]
)
WEBHOOK_DELIVERIES = Counter("jobgate_webhook_deliveries_total", "Webhook delivery attempts", ["outcome"])
WEBHOOK_LATENCY = Histogram(
    "jobgate_webhook_latency_seconds", "Webhook delivery attempt latency", buckets=LATENCY_BUCKETS_S
)


def record_jobs_finished(status: str, count: int = 1) -> None:
    JOBS_FINISHED.labels(status=status).inc(count)
