"""`jobgate bench [--quick] [--only NAME,...]`: run the registered benchmarks, write JSON, print a table.

Each benchmark module exposes `NAME` and `run(quick) -> dict`; its dict carries a `summary`
list of rows (`bench/report.py`) whose baselines were measured side by side in the same run,
because this machine is noisy and only ratios travel between runs. A full run writes
`bench/results/latest.json` (with `--only`, the other benchmarks' last figures are kept);
`--quick` writes `bench/results/quick.json`, which is not committed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    concurrency,
    limiter,
    memory,
    progress,
    scale_out,
    streaming,
    submit,
    sync_latency,
    throughput,
)
from bench.report import format_table, machine, utc_now

BENCHMARKS: list[ModuleType] = [
    limiter,
    throughput,
    concurrency,
    scale_out,
    sync_latency,
    streaming,
    submit,
    memory,
]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Benchmarks run in the background, at the lowest CPU priority, while the others run one after
# the other. The memory run needs 20,000 jobs of CPU, not time, and its figure (RSS after 20,000
# jobs vs after 2,000) does not depend on speed; run alone it would push `make bench` past 10
# minutes. Niced (its processes inherit the niceness of the thread that starts them), it takes
# what the others leave: the limiter run, first for that reason, is paced by the provider
# (about 8 jobs/s for minutes), and the other figures are ratios to baselines measured under
# the same load. Each result records what ran beside it.
BACKGROUND = {"memory"}
BACKGROUND_NICE = 19


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobgate bench", description="Run the jobgate benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    return parser.parse_args(argv)


def choose(only: str | None) -> list[ModuleType]:
    if not only:
        return BENCHMARKS
    known = {module.NAME: module for module in BENCHMARKS}
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"jobgate bench: unknown benchmark(s) {unknown}; known: {sorted(known)}")
    return [known[name] for name in names]


def run_one(module: ModuleType, quick: bool) -> dict[str, Any]:
    progress.begin(module.NAME)
    # Other work on this machine moves every wall-clock figure: record how busy it was.
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        result: dict[str, Any] = module.run(quick)
    except Exception:
        progress.end("FAILED")
        result = {"error": traceback.format_exc()}
        print(result["error"], file=sys.stderr)
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["measured_at"] = utc_now()
    result["load_avg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return result


def _run_niced(module: ModuleType, quick: bool) -> dict[str, Any]:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)  # this thread only
    return run_one(module, quick)


def run_all(chosen: list[ModuleType], quick: bool) -> dict[str, dict[str, Any]]:
    background = [module for module in chosen if module.NAME in BACKGROUND]
    foreground = [module for module in chosen if module.NAME not in BACKGROUND]
    if not background or not foreground:
        return {module.NAME: run_one(module, quick) for module in chosen}
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=len(background)) as pool:
        futures = {module.NAME: pool.submit(_run_niced, module, quick) for module in background}
        for module in foreground:
            results[module.NAME] = {**run_one(module, quick), "ran_alongside": sorted(futures)}
        for name, future in futures.items():
            alongside = [module.NAME for module in foreground]
            results[name] = {**future.result(), "ran_alongside": alongside, "nice": BACKGROUND_NICE}
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = choose(args.only)
    output = RESULTS_DIR / ("quick.json" if args.quick else "latest.json")
    started = time.monotonic()
    results = run_all(chosen, args.quick)
    merged = dict(results)
    if args.only and output.exists():
        merged = {**json.loads(output.read_text()).get("benchmarks", {}), **results}
    document = {
        "machine": machine(),
        "quick": args.quick,
        "duration_s": round(time.monotonic() - started, 1),
        "benchmarks": {module.NAME: merged[module.NAME] for module in BENCHMARKS if module.NAME in merged},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(format_table(results))
    print(f"\n{len(results)} benchmark(s) in {document['duration_s']:.0f} s; results in {output}")
    return 1 if any("error" in result for result in results.values()) else 0
