"""Upstream calls in flight from one worker process at 5 s upstream latency, time-averaged.

One `python -m workers` with the product's defaults (8 consumer threads per queue, up to
1,000 batch jobs in flight on its event loop) drains a batch of 6,000 jobs while the simulated
upstream takes 5 s per call: ideally 1,000 calls stay in flight while jobs wait in the queue,
and six waves of them finish in about 30 s. Two figures, both the sim's own, neither a peak:
- over the run: its in-flight gauge integrated over time (`in_flight_s` of `/sim/stats`)
  divided by the span from the first call's arrival to the last call's answer, ramp-up and
  tail included (the first wave starting and the last one draining count against it, for any
  client);
- while jobs wait (the issue's figure): from each call's arrival and end (`/sim/calls`), the
  calls in flight time-averaged from the end of the first call to the start of the last, when
  the queue still held work for every slot that came free.

Beside them, in the same run, the same number of calls from a plain async SDK client holding
1,000 at a time (`bench/direct_calls.py`): what this machine gives with no queue, SQL or
limiter in the way. Also checked, from SQL and the sim: every job
succeeded within its upstream latency + 2 s (`finished_at - started_at`, both on the
database's clock) and the sim answered exactly one call per job.
"""

from __future__ import annotations

from typing import Any

import psycopg

from bench import progress
from bench.batch_client import api_client, ndjson_batch, submit_and_wait
from bench.direct_calls import call_directly
from bench.fleet import DEFAULT_MAX_IN_FLIGHT, UPSTREAM_MODEL, bench_fleet
from bench.report import summary_row
from tests.sim_process import SimHandle, run_sim

NAME = "concurrency"
LATENCY_MS = 5000
MAX_IN_FLIGHT = DEFAULT_MAX_IN_FLIGHT
SLACK_S = 2.0
TIMEOUT_S = 240.0


def upstream_figures(sim: SimHandle) -> dict[str, Any]:
    """The sim's view since its last reset: calls, peak and time-averaged in flight, calls/s."""
    stats = sim.stats()
    calls = sim.calls(model=UPSTREAM_MODEL)
    arrivals = [call["t"] for call in calls]
    span_s = stats["last_call_at"] - min(arrivals) if arrivals and stats["last_call_at"] else None
    return {
        "avg_in_flight_while_waiting": in_flight_while_waiting(calls),
        "requests": stats["requests"],
        "calls": stats["calls"],
        "failed": sum(int(n) for status, n in stats["responses"].items() if status != "200"),
        "max_in_flight": stats["max_in_flight"],
        "in_flight_s": stats["in_flight_s"],
        "span_s": None if span_s is None else round(span_s, 3),
        "avg_in_flight": None if not span_s else round(stats["in_flight_s"] / span_s, 1),
        "calls_per_s": None if not span_s else round(stats["calls"] / span_s, 1),
    }


def in_flight_while_waiting(calls: list[dict[str, Any]]) -> float | None:
    """Calls in flight, time-averaged from the first call's end to the last call's start
    (each call from its arrival `t` to its `end`, as the sim recorded them)."""
    if not calls:
        return None
    start, end = min(call["end"] for call in calls), max(call["t"] for call in calls)
    if end <= start:
        return None
    covered = sum(max(0.0, min(call["end"], end) - max(call["t"], start)) for call in calls)
    return round(covered / (end - start), 1)


def job_times(database_url: str) -> dict[str, Any]:
    """Per job, from SQL: how long from its claim (`started_at`) to its final write."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE status = 'succeeded'),
                   max(extract(epoch FROM finished_at - started_at)),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                   count(*) FILTER (WHERE finished_at - started_at > make_interval(secs => %s)),
                   max(attempts)
            FROM jobs
            """,
            (LATENCY_MS / 1000 + SLACK_S,),
        ).fetchone()
        # Where a job's time beyond the upstream's goes: from its claim to its call (the
        # attempt's `started_at`, taken before the limiter and breaker), the call itself, and
        # from the answer to the final write. A job's first attempt only.
        phases = conn.execute(
            """
            WITH phase AS (
                SELECT extract(epoch FROM a.started_at - j.started_at) AS claim_to_call_s,
                       a.latency_ms / 1000.0 AS call_s,
                       extract(epoch FROM j.finished_at - a.started_at) - a.latency_ms / 1000.0
                           AS answer_to_final_s
                FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1
            )
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY claim_to_call_s), max(claim_to_call_s),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY call_s), max(call_s),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY answer_to_final_s), max(answer_to_final_s)
            FROM phase
            """
        ).fetchone()
    assert row is not None and phases is not None
    total, succeeded, slowest_s, p50_s, p99_s, over, max_attempts = row
    names = ("claim_to_call", "call", "answer_to_final")
    return {
        "jobs": total,
        "succeeded": succeeded,
        "slowest_s": _seconds(slowest_s),
        "p50_s": _seconds(p50_s),
        "p99_s": _seconds(p99_s),
        "over_latency_plus_slack": over,
        "max_attempts": max_attempts,
        "phases_s": {
            name: {"p50": _seconds(phases[2 * i]), "max": _seconds(phases[2 * i + 1])}
            for i, name in enumerate(names)
        },
    }


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def run(quick: bool) -> dict[str, Any]:
    jobs = 1_000 if quick else 6_000
    with run_sim(latency_ms=LATENCY_MS) as sim:
        progress.step(f"baseline: {jobs:,} direct calls, {MAX_IN_FLIGHT:,} at a time, {LATENCY_MS} ms each")
        failures = call_directly(sim.openai_base_url, UPSTREAM_MODEL, calls=jobs, concurrency=MAX_IN_FLIGHT)
        direct = {**upstream_figures(sim), "client_failures": failures}
        sim.reset()
        progress.step(f"jobgate: 1 worker (defaults: up to {MAX_IN_FLIGHT:,} in flight), {jobs:,} jobs")
        with bench_fleet(sim, workers=1) as fleet:
            with api_client(fleet.api_url, fleet.api_key) as client:
                timing = submit_and_wait(client, ndjson_batch(jobs, tag="cc"), jobs, timeout_s=TIMEOUT_S)
            gate = upstream_figures(sim)
            times = job_times(fleet.database_url)
    if timing.completed_s is None:
        raise TimeoutError(f"batch not completed after {TIMEOUT_S} s: {timing.counts}")
    gate.update(
        {
            "jobs": jobs,
            "post_s": round(timing.post_s, 3),
            "elapsed_s": round(timing.completed_s, 3),
            "jobs_per_s": round(jobs / timing.completed_s, 1),
            "avg_in_flight_post_to_completed": round(gate["in_flight_s"] / timing.completed_s, 1),
            "counts": timing.counts,
            "job_times": times,
        }
    )
    limit_s = LATENCY_MS / 1000 + SLACK_S
    average, direct_average = gate["avg_in_flight"], direct["avg_in_flight"]
    waiting, direct_waiting = gate["avg_in_flight_while_waiting"], direct["avg_in_flight_while_waiting"]
    progress.end(
        f"in flight while jobs wait {waiting} (direct {direct_waiting}), over the run {average}"
        f" (direct {direct_average}), peak {gate['max_in_flight']};"
        f" slowest job {times['slowest_s']} s; {gate['calls']:,} calls for {jobs:,} jobs"
    )
    label = f"1 worker (defaults), {LATENCY_MS / 1000:g} s upstream, {jobs:,} jobs"
    return {
        "shape": {
            "processes": 1,
            "threads": "default",
            "max_in_flight": MAX_IN_FLIGHT,
            "sim_latency_ms": LATENCY_MS,
            "jobs": jobs,
        },
        "jobgate": gate,
        "direct_baseline": direct,
        "ratio_avg_in_flight_to_direct": round(average / direct_average, 3),
        "ratio_avg_in_flight_to_max": round(average / MAX_IN_FLIGHT, 3),
        "summary": [
            summary_row(
                f"calls in flight while jobs wait, time-averaged, {label}"
                f" (vs a direct async client, {MAX_IN_FLIGHT:,} at a time)",
                waiting,
                direct_waiting,
                None if not (waiting and direct_waiting) else waiting / direct_waiting,
                target=">= 1,000",
                met=waiting is not None and waiting >= 1000,
            ),
            summary_row(
                "calls in flight, time-averaged over the whole run, ramp-up and tail included (vs direct)",
                average,
                direct_average,
                average / direct_average,
            ),
            summary_row(
                f"time-averaged in flight (vs the configured max in flight, {MAX_IN_FLIGHT:,})",
                average,
                MAX_IN_FLIGHT,
                average / MAX_IN_FLIGHT,
            ),
            summary_row(
                "peak calls in flight (vs direct)",
                gate["max_in_flight"],
                direct["max_in_flight"],
                gate["max_in_flight"] / direct["max_in_flight"],
            ),
            summary_row(
                f"slowest job, finished - started, s (vs latency + {SLACK_S:g} s)",
                times["slowest_s"],
                limit_s,
                None if times["slowest_s"] is None else times["slowest_s"] / limit_s,
                target=f"every job <= {limit_s:g} s",
                met=times["over_latency_plus_slack"] == 0 and times["succeeded"] == jobs,
            ),
            summary_row(
                "upstream calls (vs jobs)",
                gate["requests"],
                jobs,
                gate["requests"] / jobs,
                target="== jobs",
                met=gate["requests"] == gate["calls"] == jobs,
            ),
            summary_row(
                f"upstream calls/s at {LATENCY_MS / 1000:g} s latency (vs direct)",
                gate["calls_per_s"],
                direct["calls_per_s"],
                gate["calls_per_s"] / direct["calls_per_s"],
            ),
        ],
    }
