"""Scaling out: upstream calls/s with 1, 2 and 4 worker processes, against linear in the first.

Each worker process may keep at most 100 jobs in flight (`--max-in-flight 100`, the setting
the figure prescribes; everything else is the product's default) and the
simulated upstream takes 2 s per call, so one process is bounded by its cap, not by the CPU:
about 50 calls/s at most (45 for batch jobs, which leave a tenth of the slots to interactive
ones, `workers/actors.py`). One fleet starts with one worker and grows to two, then four;
each step drains a batch of 1,000 jobs per process (about 20 s at the ceiling, ramp-up and
tail included). Calls/s is the sim's count over the span from the first call's arrival to
the last call's answer. The baseline, measured in the same run, is linear scaling: N times
the one-process calls/s. The issue's target: at least 0.9 of linear.
"""

from __future__ import annotations

from typing import Any

from bench import progress
from bench.batch_client import api_client, ndjson_batch, submit_and_wait
from bench.concurrency import upstream_figures
from bench.fleet import bench_fleet
from bench.report import summary_row
from tests.sim_process import run_sim

NAME = "scale_out"
LATENCY_MS = 2000
MAX_IN_FLIGHT = 100
PROCESSES = (1, 2, 4)
TIMEOUT_S = 180.0
LINEAR_TARGET = 0.9


def run(quick: bool) -> dict[str, Any]:
    jobs_per_process = 150 if quick else 1_000
    steps: list[dict[str, Any]] = []
    with (
        run_sim(latency_ms=LATENCY_MS) as sim,
        bench_fleet(sim, workers=1, max_in_flight=MAX_IN_FLIGHT) as fleet,
        api_client(fleet.api_url, fleet.api_key) as client,
    ):
        for processes in PROCESSES:
            while len(fleet.workers) < processes:
                fleet.start_worker()
            jobs = jobs_per_process * processes
            progress.step(f"{processes} worker(s) x {MAX_IN_FLIGHT} in flight, {jobs:,} jobs")
            sim.reset()
            timing = submit_and_wait(
                client, ndjson_batch(jobs, tag=f"so{processes}"), jobs, timeout_s=TIMEOUT_S
            )
            if timing.completed_s is None:
                raise TimeoutError(
                    f"{processes} workers: batch not completed after {TIMEOUT_S} s: {timing.counts}"
                )
            steps.append(
                {
                    "processes": processes,
                    "jobs": jobs,
                    "elapsed_s": round(timing.completed_s, 3),
                    "counts": timing.counts,
                    **upstream_figures(sim),
                }
            )
    one = steps[0]["calls_per_s"]
    for step in steps:
        step["linear_calls_per_s"] = round(one * step["processes"], 1)
        step["ratio_to_linear"] = round(step["calls_per_s"] / step["linear_calls_per_s"], 3)
        step["ceiling_calls_per_s"] = MAX_IN_FLIGHT * step["processes"] * 1000 / LATENCY_MS
    progress.end(
        ", ".join(
            f"{s['processes']}: {s['calls_per_s']} calls/s ({s['ratio_to_linear']} of linear)" for s in steps
        )
    )
    ceiling = MAX_IN_FLIGHT * 1000 / LATENCY_MS
    return {
        "shape": {
            "max_in_flight": MAX_IN_FLIGHT,
            "threads": "default",
            "sim_latency_ms": LATENCY_MS,
            "jobs_per_process": jobs_per_process,
        },
        "steps": steps,
        "summary": [
            summary_row(
                f"calls/s, 1 worker x {MAX_IN_FLIGHT} in flight, {LATENCY_MS / 1000:g} s upstream"
                f" (vs the cap's ceiling, {ceiling:g}/s)",
                one,
                ceiling,
                one / ceiling,
            ),
            *(
                summary_row(
                    f"calls/s, {step['processes']} workers (vs linear: {step['processes']} x 1 worker)",
                    step["calls_per_s"],
                    step["linear_calls_per_s"],
                    step["ratio_to_linear"],
                    target=f">= {LINEAR_TARGET}x",
                    met=step["ratio_to_linear"] >= LINEAR_TARGET,
                )
                for step in steps[1:]
            ),
        ],
    }
