"""The latency jobgate adds to `POST /v1/chat/completions`, and its rate at concurrency 50,
against calling the upstream directly.

One OpenAI SDK client points its `base_url` at jobgate (API + 1 worker with the product's
defaults, on Postgres), another at the simulated upstream (0 ms latency). Latency: requests
are sequential and alternate between the two, so both sides see the same machine noise;
after a short warm-up, each side's p50/p99 is taken over the same number of requests.
jobgate's path: submit (SQL insert), enqueue, a worker picks the message up, claims, calls
the sim, writes the result, publishes job-done, and the waiting API request wakes and
answers. Rate: 50 callers on one async SDK client, each sending its next request when the
last is answered, for a few seconds at a time, alternating between jobgate and the sim over
a few rounds; requests answered per second, each side over its own rounds. The issue's
target: jobgate's rps at least 0.25x the direct rps.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import openai

from bench import progress
from bench.direct_calls import async_client
from bench.fleet import ALIAS, DEFAULT_THREADS, UPSTREAM_MODEL, bench_fleet
from bench.report import summary_row
from tests.fleet import Fleet
from tests.sim_process import SimHandle, run_sim

NAME = "sync_latency"
WARMUP = 10
CONCURRENCY = 50
RPS_RATIO_TARGET = 0.25


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


async def _load(base_url: str, api_key: str, model: str, duration_s: float) -> tuple[int, int, float]:
    """`CONCURRENCY` callers, one request after another each, for `duration_s` (requests under
    way at the deadline finish and count): (answered, failed, elapsed seconds)."""
    client = async_client(base_url, CONCURRENCY, api_key=api_key)
    answered = failed = 0
    started = time.monotonic()
    deadline = started + duration_s

    async def caller(lane: int) -> None:
        nonlocal answered, failed
        for index in itertools.count():
            if time.monotonic() >= deadline:
                return
            try:
                await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"load {lane}-{index}-{started}"}],
                    max_tokens=16,
                )
                answered += 1
            except openai.OpenAIError:
                failed += 1

    try:
        await asyncio.gather(*(caller(lane) for lane in range(CONCURRENCY)))
    finally:
        await client.close()
    return answered, failed, time.monotonic() - started


def measure_rps(fleet: Fleet, sim: SimHandle, *, rounds: int, round_s: float) -> dict[str, dict[str, Any]]:
    sides = {
        "jobgate": (f"{fleet.api_url}/v1", fleet.api_key, ALIAS),
        "direct": (sim.openai_base_url, "bench", UPSTREAM_MODEL),
    }
    totals = {name: {"answered": 0, "failed": 0, "elapsed_s": 0.0} for name in sides}
    for index in range(rounds):
        for name, (base_url, api_key, model) in sides.items():
            progress.step(f"rps round {index + 1}/{rounds}: {name}, {CONCURRENCY} callers for {round_s:g} s")
            answered, failed, elapsed_s = asyncio.run(_load(base_url, api_key, model, round_s))
            totals[name]["answered"] += answered
            totals[name]["failed"] += failed
            totals[name]["elapsed_s"] += elapsed_s
    return {
        name: {
            **total,
            "elapsed_s": round(total["elapsed_s"], 3),
            "rps": round(total["answered"] / total["elapsed_s"], 1),
        }
        for name, total in totals.items()
    }


def run(quick: bool) -> dict[str, Any]:
    requests = 50 if quick else 200
    rounds, round_s = (1, 3.0) if quick else (3, 5.0)
    progress.step(f"jobgate: API + 1 worker (defaults); {requests} request pairs")
    with run_sim(latency_ms=0) as sim, bench_fleet(sim, workers=1) as fleet:
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
        rps = measure_rps(fleet, sim, rounds=rounds, round_s=round_s)
    gate, base = figures(samples["jobgate"]), figures(samples["direct"])
    rps_ratio = rps["jobgate"]["rps"] / rps["direct"]["rps"]
    added = {
        "p50_ms": round(gate["p50_ms"] - base["p50_ms"], 2),
        "p99_ms": round(gate["p99_ms"] - base["p99_ms"], 2),
        "mean_ms": round(gate["mean_ms"] - base["mean_ms"], 2),
    }
    progress.end(
        f"added p50 {added['p50_ms']} ms, p99 {added['p99_ms']} ms;"
        f" {rps['jobgate']['rps']} rps at concurrency {CONCURRENCY} vs {rps['direct']['rps']} direct"
    )
    return {
        "shape": {
            "requests": requests,
            "warmup": WARMUP,
            "worker_threads": DEFAULT_THREADS,
            "sim_latency_ms": 0,
            "rps_concurrency": CONCURRENCY,
            "rps_rounds": rounds,
            "rps_round_s": round_s,
        },
        "jobgate": gate,
        "direct_baseline": base,
        "added": added,
        "rps": rps,
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
            summary_row(
                f"chat/completions rps, {CONCURRENCY} callers (vs direct to sim, {CONCURRENCY} callers)",
                rps["jobgate"]["rps"],
                rps["direct"]["rps"],
                rps_ratio,
                target=f">= {RPS_RATIO_TARGET}x",
                met=rps_ratio >= RPS_RATIO_TARGET and rps["jobgate"]["failed"] == 0,
            ),
        ],
    }
