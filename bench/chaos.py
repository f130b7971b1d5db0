"""The full-size chaos run (`make chaos`): 5,000 jobs while workers are SIGKILLed and Redis crashes.

The issue's figure: a 5,000-job batch against the simulated upstream at 200 ms a call, three
worker processes, a random worker `kill -9`ed every few seconds and replaced, Redis crashed
and restarted empty once mid-run (`tests/chaos.py`, whose short form runs in `make test`).
The verdict is read from SQL and from the sim's own call count: every job succeeded, each
with exactly one recorded success, and no upstream call beyond one per job that is not
explained by an attempt a killed worker left behind. Exits 1 if any of that fails.

    python -m bench.chaos [--jobs N] [--seed S]     # writes bench/results/chaos.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.chaos import ChaosPlan, run_chaos

RESULTS = Path(__file__).resolve().parent / "results" / "chaos.json"
PROGRESS_EVERY_S = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    plan = ChaosPlan(
        jobs=args.jobs, workers=3, threads=8, max_in_flight=8, latency_ms=200, timeout_s=900, seed=args.seed
    )
    last = [0.0]

    def on_progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = time.monotonic()
            print(f"[chaos] {done:,}/{total:,} jobs final", file=sys.stderr, flush=True)

    report = run_chaos(plan, on_progress)
    problems = report.problems()
    document = {"plan": plan.__dict__, "report": report.as_dict(), "problems": problems}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2, default=list) + "\n")
    summary = report.as_dict()
    print(
        f"{report.jobs:,} jobs in {report.elapsed_s:.0f} s, {report.kills} workers killed,"
        f" {report.redis_restarts} Redis restart(s); states {summary['counts']};"
        f" upstream calls {report.upstream_calls:,} (+{report.extra_upstream_calls} beyond one per job,"
        f" {report.retried_attempts} retried attempts)"
    )
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    print(f"results in {RESULTS}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
