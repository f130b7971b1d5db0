"""The fleet limiter against a provider that enforces its limits per second: budget used, 429s.

Three worker processes drain one batch of distinct prompts (cache off) from a simulated upstream
that enforces RPM and TPM the way providers do (per-second buckets, `sim/limits.py`). The same
batch runs twice in one invocation, at the same time, each on a fresh sim and fleet:
- `limited`: the provider in jobgate's config names the sim's rpm/tpm, so the fleet limiter paces;
- `unlimited`: the provider has no rpm/tpm, so jobgate does not pace and learns the limits from
  429s (it still honours their Retry-After).
Each job's `max_tokens` is its answer's exact size, so jobgate's estimate is what the sim charges,
and prompt sizes vary so that the token limit, not the request limit, binds. Figures, from the
sim's own counters: tokens used / tokens allowed (tpm/60 per second) over the busy period (first
to last answered call) and over the whole run (submit to last job final), 429s answered, jobs
that failed, the busiest second's calls.

Full size (the issue's figure, minutes): 600 RPM, 60,000 TPM, 2,000 jobs, 3 workers.
`--quick`: 6,000 RPM, 600,000 TPM, 1,000 jobs (same ratios, seconds). The run without the
limiter (the baseline) drains an eighth as many jobs.

    python -m bench.limiter [--quick]     # writes bench/results/limiter.json (limiter-quick.json)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.fleet import PRODUCT_DEFAULTS
from bench.report import summary_row
from tests.fleet import Fleet, chat_body, job_cost_tokens, run_fleet, sim_provider, token_use
from tests.sim_process import SimHandle, run_sim

NAME = "limiter"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROGRESS_EVERY_S = 5.0
POLL_S = 0.5
MODEL = "bench-limited"


@dataclass(frozen=True)
class Shape:
    rpm: int
    tpm: int
    jobs: int
    workers: int = 3
    threads: int = 8
    # Prompt lengths vary over this range (characters); answers are about as long, so a job
    # costs 86-166 tokens (126 on average) and at rpm/tpm = 1/100 the token limit binds.
    prompt_chars: tuple[int, int] = (160, 320)
    seed: int = 7


SCALES = {
    "full": Shape(rpm=600, tpm=60_000, jobs=2_000),
    "quick": Shape(rpm=6_000, tpm=600_000, jobs=1_000),
}


def prompts(shape: Shape) -> dict[str, str]:
    rng = random.Random(shape.seed)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    out = {}
    for i in range(shape.jobs):
        length = rng.randint(*shape.prompt_chars)
        text = f"request {i:05d}:"
        while len(text) < length:
            text += " " + rng.choice(words)
        out[f"job-{i:05d}"] = text[:length]
    return out


def config(sim: SimHandle, shape: Shape, *, limiter: bool) -> dict[str, Any]:
    limits = {"rpm": shape.rpm, "tpm": shape.tpm} if limiter else {}
    return {
        "providers": {"sim": sim_provider(sim, **limits)},
        "models": {"bench": {"targets": [{"provider": "sim", "model": MODEL}]}},
        "cache": {"default": False, "ttl_s": 60},
    }


def _progress(label: str, started: float, counts: dict[str, int], stats: dict[str, Any]) -> None:
    final = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    print(
        f"[limiter {label} {time.monotonic() - started:6.1f}s] {final:,}/{counts['total']:,} jobs final"
        f" ({counts['failed']} failed), sim calls {stats['calls']:,}, 429s {stats['rate_limited']:,}",
        file=sys.stderr,
        flush=True,
    )


def _drain(fleet: Fleet, batch_id: str, label: str, *, timeout_s: float) -> dict[str, Any]:
    """Wait for the batch to finish, with a progress line every few seconds."""
    started = time.monotonic()
    last_report = started
    while True:
        batch = fleet.batch(batch_id)
        counts = batch["counts"]
        now = time.monotonic()
        done = counts["queued"] + counts["running"] == 0
        if done or now - last_report >= PROGRESS_EVERY_S:
            _progress(label, started, counts, fleet.sim.stats())
            last_report = now
        if done:
            return batch
        if now - started > timeout_s:
            raise TimeoutError(f"{label}: batch not finished after {timeout_s:.0f} s: {counts}")
        time.sleep(POLL_S)


def busiest_second(times: list[float]) -> int:
    """The most calls whose arrival times fall within any one second."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def run_once(shape: Shape, *, limiter: bool) -> dict[str, Any]:
    label = "limited" if limiter else "unlimited"
    texts = prompts(shape)
    bodies = {cid: chat_body("bench", text) for cid, text in texts.items()}
    # How long the batch takes if every second's token budget is used, no more, no less.
    expected_s = sum(job_cost_tokens(text) for text in texts.values()) / (shape.tpm / 60)
    with run_sim(rpm=shape.rpm, tpm=shape.tpm) as sim:
        print(
            f"[limiter {label}] starting {shape.workers} workers x {shape.threads} threads", file=sys.stderr
        )
        with run_fleet(
            sim=sim,
            config=config(sim, shape, limiter=limiter),
            workers=shape.workers,
            threads=shape.threads,
            settings=PRODUCT_DEFAULTS,
        ) as fleet:
            submitted = time.monotonic()
            batch_id = fleet.submit_batch(bodies)
            batch = _drain(fleet, batch_id, label, timeout_s=max(120.0, 4 * expected_s))
            elapsed_s = time.monotonic() - submitted
        stats = sim.stats()
        calls = sim.calls(model=MODEL)
    use = token_use(stats, tpm=shape.tpm)
    wall_allowed = shape.tpm / 60 * elapsed_s
    return {
        "limiter": limiter,
        "jobs": shape.jobs,
        "counts": batch["counts"],
        "elapsed_s": round(elapsed_s, 2),
        "busy_s": round(use.duration_s, 2),
        "at_limit_s": round(expected_s, 2),
        "upstream_calls": use.calls,
        "rate_limited_429s": use.rate_limited,
        "tokens_used": use.tokens,
        "tokens_allowed_busy": round(use.allowed_tokens),
        "utilisation_busy": round(use.utilisation, 4),
        "utilisation_wall": round(use.tokens / wall_allowed, 4) if wall_allowed else None,
        "busiest_second_calls": busiest_second([c["t"] for c in calls if c["status"] == 200]),
        "rpm_per_second": shape.rpm / 60,
    }


def run(scale: str | bool = "full") -> dict[str, Any]:
    """Both runs at `scale` ("full" or "quick"; True means quick, as `jobgate bench --quick` passes).

    The baseline without the limiter runs an eighth of the jobs (the same limits and prompt
    mix): its figures are rates (429s per 1,000 calls, failed share), which do not need the
    full size, and the full-size run without a limiter would take minutes more. The two run
    at the same time, each on its own sim and fleet: the limited run is paced by its
    provider, not by the CPU, and side by side both see the same machine.
    """
    name = ("quick" if scale else "full") if isinstance(scale, bool) else scale
    shape = SCALES[name]
    with ThreadPoolExecutor(max_workers=1) as pool:
        baseline = pool.submit(run_once, replace(shape, jobs=shape.jobs // 8), limiter=False)
        limited = run_once(shape, limiter=True)
        unlimited = baseline.result()
    return {
        "scale": name,
        "shape": asdict(shape),
        "limited": limited,
        "unlimited": unlimited,
        "summary": [
            _row(
                "token budget used over the busy period (limiter on vs off)", limited, unlimited, _utilisation
            ),
            _row("429s per 1,000 upstream calls (limiter on vs off)", limited, unlimited, _rate_limited),
            _row("jobs failed per 1,000 (limiter on vs off)", limited, unlimited, _failed),
        ],
    }


def _utilisation(figures: dict[str, Any]) -> float:
    return float(figures["utilisation_busy"])


def _rate_limited(figures: dict[str, Any]) -> float:
    return round(1000 * figures["rate_limited_429s"] / max(figures["upstream_calls"], 1), 2)


def _failed(figures: dict[str, Any]) -> float:
    return round(1000 * figures["counts"]["failed"] / figures["jobs"], 2)


def _row(
    figure: str,
    limited: dict[str, Any],
    unlimited: dict[str, Any],
    measure: Callable[[dict[str, Any]], float],
) -> dict[str, Any]:
    value, baseline = measure(limited), measure(unlimited)
    return summary_row(figure, value, baseline, value / baseline if baseline else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6,000 RPM / 600,000 TPM over 1,000 jobs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run("quick" if args.quick else "full")
    result["duration_s"] = round(time.monotonic() - started, 1)
    output = RESULTS_DIR / ("limiter-quick.json" if args.quick else "limiter.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    for label in ("limited", "unlimited"):
        figures = result[label]
        print(
            f"{label:>9}: utilisation {figures['utilisation_busy']:.1%} (busy) /"
            f" {figures['utilisation_wall']:.1%} (wall), 429s {figures['rate_limited_429s']},"
            f" failed {figures['counts']['failed']}, {figures['elapsed_s']:.1f} s"
        )
    print(f"results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
