"""Submit throughput for a 50,000-job NDJSON batch, and the time to its first result, on Postgres.

The API (one process) and 2 workers (the product's defaults) run, the simulated upstream
answers at once. One `POST /v1/batches` uploads 50,000 NDJSON lines; accepted jobs/s is 50,000 over
the POST's duration (parse and validate every line, insert every job, commit, answer with
the batch's counts; the API enqueues the jobs pipelined right after answering). The first
result is the first job seen succeeded, from the start of the POST. The batch is not
drained: the fleet is stopped and its database dropped. The baseline beside it is the
broker alone: the same number of messages enqueued pipelined (`core.queue.enqueue_messages`,
what the API does after answering), a rate with no SQL or validation in it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench import progress
from bench.batch_client import FirstResultWatch, api_client, ndjson_batch, post_ndjson
from bench.fleet import DEFAULT_THREADS, bench_fleet
from bench.noop_worker import enqueue_noops
from bench.report import summary_row
from core import queue
from core.redis.keys import Keys
from tests.sim_process import run_sim

NAME = "submit"
PROCESSES = 2
FIRST_RESULT_TIMEOUT_S = 120.0


def measure_enqueue(redis_url: str, prefix: str, count: int) -> float:
    """Seconds to enqueue `count` messages pipelined (no worker consumes them)."""
    broker = queue.build_broker(redis_url, Keys(prefix), max_connections=8, timeout_s=10)
    try:
        started = time.monotonic()
        enqueue_noops(broker, count, run_id=uuid.uuid4().hex[:8])
        return time.monotonic() - started
    finally:
        broker.close()


def run(quick: bool) -> dict[str, Any]:
    jobs = 10_000 if quick else 50_000
    body = ndjson_batch(jobs, tag="sub")
    with run_sim(latency_ms=0) as sim, bench_fleet(sim, workers=PROCESSES) as fleet:
        progress.step(f"baseline: enqueue {jobs:,} messages pipelined")
        enqueue_s = measure_enqueue(fleet.redis_url, fleet.redis_prefix, jobs)
        with api_client(fleet.api_url, fleet.api_key) as client:
            progress.step(f"uploading {jobs:,} jobs ({len(body) / 1e6:.1f} MB NDJSON)")
            started = time.monotonic()
            with FirstResultWatch(client, started) as watch:
                batch = post_ndjson(client, body)
                post_s = time.monotonic() - started
                progress.step(f"accepted in {post_s:.1f} s; waiting for the first result")
                first_result_s = watch.wait(timeout_s=FIRST_RESULT_TIMEOUT_S)
        progress.step("stopping the fleet (the batch is not drained)")
    if batch["counts"]["total"] != jobs:
        raise RuntimeError(f"batch accepted {batch['counts']['total']} jobs, expected {jobs}")
    accepted_per_s = jobs / post_s
    enqueue_per_s = jobs / enqueue_s
    progress.end(f"{accepted_per_s:,.0f} jobs/s accepted; first result after {first_result_s} s")
    return {
        "shape": {"jobs": jobs, "body_bytes": len(body), "processes": PROCESSES, "threads": DEFAULT_THREADS},
        "jobgate": {
            "post_s": round(post_s, 3),
            "accepted_jobs_per_s": round(accepted_per_s, 1),
            "first_result_s": None if first_result_s is None else round(first_result_s, 3),
        },
        "enqueue_baseline": {"enqueue_s": round(enqueue_s, 3), "msgs_per_s": round(enqueue_per_s, 1)},
        "summary": [
            summary_row(
                f"{jobs // 1000}k batch accepted jobs/s (vs pipelined enqueue msgs/s)",
                accepted_per_s,
                enqueue_per_s,
                accepted_per_s / enqueue_per_s,
            ),
            summary_row(f"{jobs // 1000}k batch POST duration, s", post_s),
            summary_row(f"{jobs // 1000}k batch time to first result, s", first_result_s),
        ],
    }
