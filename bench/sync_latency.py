"""The latency jobgate adds to `POST /v1/chat/completions`, against calling the upstream directly.

One OpenAI SDK client points its `base_url` at jobgate (API + 1 worker x 8 threads on
Postgres), another at the simulated upstream (0 ms latency). Requests are sequential and
alternate between the two, so both sides see the same machine noise; after a short warm-up,
each side's p50/p99 is taken over the same number of requests. jobgate's path: submit
(SQL insert), enqueue, a worker picks the message up, claims, calls the sim, writes the
result, publishes job-done, and the waiting API request wakes and answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import openai

from bench import progress
from bench.fleet import ALIAS, UPSTREAM_MODEL, bench_fleet
from bench.report import summary_row
from tests.sim_process import run_sim

NAME = "sync_latency"
WORKER_THREADS = 8
WARMUP = 10


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def timed_call(client: openai.OpenAI, model: str, index: int) -> float:
    started = time.perf_counter()
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"sync prompt {index}"}], max_tokens=16
    )
    return (time.perf_counter() - started) * 1000


def figures(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples_ms, 50), 2),
        "p90_ms": round(percentile(samples_ms, 90), 2),
        "p99_ms": round(percentile(samples_ms, 99), 2),
        "mean_ms": round(sum(samples_ms) / len(samples_ms), 2),
        "max_ms": round(max(samples_ms), 2),
    }


def run(quick: bool) -> dict[str, Any]:
    requests = 50 if quick else 200
    progress.step(f"jobgate: API + 1 worker x {WORKER_THREADS} threads; {requests} request pairs")
    with run_sim(latency_ms=0) as sim, bench_fleet(sim, workers=1, threads=WORKER_THREADS) as fleet:
        via = openai.OpenAI(base_url=f"{fleet.api_url}/v1", api_key=fleet.api_key, max_retries=0, timeout=60)
        direct = openai.OpenAI(base_url=sim.openai_base_url, api_key="bench", max_retries=0, timeout=60)
        sides: dict[str, Callable[[int], float]] = {
            "jobgate": lambda i: timed_call(via, ALIAS, i),
            "direct": lambda i: timed_call(direct, UPSTREAM_MODEL, i),
        }
        samples: dict[str, list[float]] = {name: [] for name in sides}
        try:
            for i in range(WARMUP + requests):
                for name, call in sides.items():
                    elapsed_ms = call(i)
                    if i >= WARMUP:
                        samples[name].append(elapsed_ms)
                progress.bar(i + 1, WARMUP + requests, "request pairs")
        finally:
            via.close()
            direct.close()
    gate, base = figures(samples["jobgate"]), figures(samples["direct"])
    added = {
        "p50_ms": round(gate["p50_ms"] - base["p50_ms"], 2),
        "p99_ms": round(gate["p99_ms"] - base["p99_ms"], 2),
        "mean_ms": round(gate["mean_ms"] - base["mean_ms"], 2),
    }
    progress.end(f"added p50 {added['p50_ms']} ms, p99 {added['p99_ms']} ms")
    return {
        "shape": {
            "requests": requests,
            "warmup": WARMUP,
            "worker_threads": WORKER_THREADS,
            "sim_latency_ms": 0,
        },
        "jobgate": gate,
        "direct_baseline": base,
        "added": added,
        "summary": [
            summary_row(
                "chat/completions p50 ms (vs direct to sim)",
                gate["p50_ms"],
                base["p50_ms"],
                gate["p50_ms"] / base["p50_ms"],
            ),
            summary_row(
                "chat/completions p99 ms (vs direct to sim)",
                gate["p99_ms"],
                base["p99_ms"],
                gate["p99_ms"] / base["p99_ms"],
            ),
            summary_row("added latency p50 ms", added["p50_ms"]),
            summary_row("added latency p99 ms", added["p99_ms"]),
        ],
    }
