"""Time to first token of a streamed `POST /v1/chat/completions`, against streaming from the
simulated upstream directly.

One OpenAI SDK client streams from jobgate (API + 1 worker, the product's defaults, on
Postgres), another from the sim itself; the sim sends one token every 20 ms. Requests are
sequential and alternate between the two, so both sides see the same machine noise; each
side's time to the first content chunk is taken after a short warm-up. The issue's target:
jobgate adds at most 5 ms p50 to the first token. The streamed text is checked equal on both
sides.
"""

from __future__ import annotations

import time
from typing import Any

import openai

from bench import progress
from bench.fleet import ALIAS, UPSTREAM_MODEL, bench_fleet
from bench.report import summary_row
from bench.sync_latency import figures
from tests.sim_process import run_sim

NAME = "streaming"
WARMUP = 10
TOKEN_DELAY_MS = 20
TARGET_ADDED_MS = 5.0


def first_token_ms(client: openai.OpenAI, model: str, index: int) -> tuple[float, str]:
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"stream prompt {index}"}], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first if first is not None else time.perf_counter()
                parts.append(choice.delta.content)
    assert first is not None, "no content streamed"
    return (first - started) * 1000, "".join(parts)


def run(quick: bool) -> dict[str, Any]:
    requests = 30 if quick else 150
    progress.step(
        f"jobgate: API + 1 worker (defaults); {requests} streamed request pairs, {TOKEN_DELAY_MS} ms a token"
    )
    with run_sim(latency_ms=0) as sim, bench_fleet(sim, workers=1) as fleet:
        sim.configure(stream_delay_ms=TOKEN_DELAY_MS)
        via = openai.OpenAI(base_url=f"{fleet.api_url}/v1", api_key=fleet.api_key, max_retries=0, timeout=60)
        direct = openai.OpenAI(base_url=sim.openai_base_url, api_key="bench", max_retries=0, timeout=60)
        samples: dict[str, list[float]] = {"jobgate": [], "direct": []}
        try:
            for i in range(WARMUP + requests):
                gate_ms, gate_text = first_token_ms(via, ALIAS, i)
                direct_ms, direct_text = first_token_ms(direct, UPSTREAM_MODEL, i)
                if gate_text != direct_text:
                    raise AssertionError(f"streamed texts differ: {gate_text!r} vs {direct_text!r}")
                if i >= WARMUP:
                    samples["jobgate"].append(gate_ms)
                    samples["direct"].append(direct_ms)
                progress.bar(i + 1, WARMUP + requests, "request pairs")
        finally:
            via.close()
            direct.close()
    gate, base = figures(samples["jobgate"]), figures(samples["direct"])
    added = round(gate["p50_ms"] - base["p50_ms"], 2)
    progress.end(
        f"time to first token added p50 {added} ms (jobgate {gate['p50_ms']}, direct {base['p50_ms']})"
    )
    return {
        "shape": {"requests": requests, "warmup": WARMUP, "token_delay_ms": TOKEN_DELAY_MS},
        "jobgate": gate,
        "direct_baseline": base,
        "added_p50_ms": added,
        "summary": [
            summary_row(
                "streamed time to first token p50 ms (vs streaming from the sim directly)",
                gate["p50_ms"],
                base["p50_ms"],
                gate["p50_ms"] / base["p50_ms"],
            ),
            summary_row(
                "time to first token added p50 ms",
                added,
                target=f"<= {TARGET_ADDED_MS:g} ms",
                met=added <= TARGET_ADDED_MS,
            ),
        ],
    }
