"""In-flight upstream calls per worker process at 1 s upstream latency.

One `python -m workers --threads 256` drains a batch of 1,500 jobs while the simulated
upstream takes 1 s per call. If every thread holds one upstream call, the sim sees 256 in
flight and about 256 calls/s. Beside it, in the same run, a plain script
(`bench/direct_calls.py`) makes the same 1,500 calls from 256 threads with the same SDK:
what this machine reaches with no queue, SQL or limiter in the way. Calls/s is the sim's
count over the span from the first call's arrival to the last call's answer.
"""

from __future__ import annotations

from typing import Any

from bench import progress
from bench.batch_client import api_client, ndjson_batch, submit_and_wait
from bench.direct_calls import call_directly
from bench.fleet import UPSTREAM_MODEL, bench_fleet
from bench.report import summary_row
from tests.sim_process import SimHandle, run_sim

NAME = "concurrency"
THREADS = 256
LATENCY_MS = 1000
TIMEOUT_S = 120.0


def upstream_figures(sim: SimHandle) -> dict[str, Any]:
    stats = sim.stats()
    arrivals = [call["t"] for call in sim.calls(model=UPSTREAM_MODEL)]
    span_s = stats["last_call_at"] - min(arrivals) if arrivals and stats["last_call_at"] else None
    return {
        "calls": stats["calls"],
        "failed": sum(int(n) for status, n in stats["responses"].items() if status != "200"),
        "max_in_flight": stats["max_in_flight"],
        "span_s": None if span_s is None else round(span_s, 3),
        "calls_per_s": None if not span_s else round(stats["calls"] / span_s, 1),
    }


def run(quick: bool) -> dict[str, Any]:
    jobs = 600 if quick else 1_500
    with run_sim(latency_ms=LATENCY_MS) as sim:
        progress.step(f"baseline: {jobs:,} direct calls from {THREADS} threads")
        failures = call_directly(sim.openai_base_url, UPSTREAM_MODEL, calls=jobs, threads=THREADS)
        direct = {**upstream_figures(sim), "client_failures": failures}
        sim.reset()
        progress.step(f"jobgate: 1 worker x {THREADS} threads, {jobs:,} jobs")
        with bench_fleet(sim, workers=1, threads=THREADS) as fleet:
            with api_client(fleet.api_url, fleet.api_key) as client:
                timing = submit_and_wait(client, ndjson_batch(jobs, tag="cc"), jobs, timeout_s=TIMEOUT_S)
            gate = upstream_figures(sim)
    if timing.completed_s is None:
        raise TimeoutError(f"batch not completed after {TIMEOUT_S} s: {timing.counts}")
    gate.update(
        {
            "jobs": jobs,
            "post_s": round(timing.post_s, 3),
            "elapsed_s": round(timing.completed_s, 3),
            "jobs_per_s": round(jobs / timing.completed_s, 1),
            "counts": timing.counts,
        }
    )
    ceiling = THREADS * 1000 / LATENCY_MS
    progress.end(
        f"max in flight {gate['max_in_flight']} (direct {direct['max_in_flight']}), "
        f"{gate['calls_per_s']} calls/s (direct {direct['calls_per_s']})"
    )
    return {
        "shape": {"processes": 1, "threads": THREADS, "sim_latency_ms": LATENCY_MS, "jobs": jobs},
        "configured_max_in_flight": THREADS,
        "configured_max_calls_per_s": ceiling,
        "jobgate": gate,
        "direct_baseline": direct,
        "ratio_in_flight_to_threads": round(gate["max_in_flight"] / THREADS, 3),
        "ratio_calls_per_s_to_direct": round(gate["calls_per_s"] / direct["calls_per_s"], 3),
        "summary": [
            summary_row(
                "max in flight, 1 worker x 256 threads (vs direct 256 threads)",
                gate["max_in_flight"],
                direct["max_in_flight"],
                gate["max_in_flight"] / direct["max_in_flight"],
            ),
            summary_row(
                "upstream calls/s at 1 s latency (vs direct)",
                gate["calls_per_s"],
                direct["calls_per_s"],
                gate["calls_per_s"] / direct["calls_per_s"],
            ),
            summary_row(
                "max in flight / configured threads",
                gate["max_in_flight"],
                THREADS,
                gate["max_in_flight"] / THREADS,
            ),
        ],
    }
