"""Worker memory over a long run: RSS after 20,000 jobs next to RSS after the first 2,000.

One `python -m workers` (the product's defaults) drains NDJSON batches of distinct prompts (2,000, then
three of 6,000), one after the other, from the simulated upstream answering at once (cache off, so every job
makes its call, writes its attempt and result). The worker's resident set size is read from
`/proc/<pid>/status` once each batch has completed. The baseline is the RSS after the first
batch (the worker warmed up: pools filled, code paths taken), the figure the RSS after the
last; a leak of even a few hundred bytes per job shows as a ratio above 1.2. The peak over
all readings is reported too.

`--quick` (smoke run): 500, then two batches of 2,000.
"""

from __future__ import annotations

from typing import Any

from bench import progress
from bench.batch_client import api_client, ndjson_batch, submit_and_wait
from bench.fleet import DEFAULT_MAX_IN_FLIGHT, DEFAULT_THREADS, bench_fleet
from bench.report import summary_row
from tests.sim_process import run_sim

NAME = "memory"
TIMEOUT_S = 300.0


def rss_mb(pid: int) -> float:
    """Resident set size of a live process, in MiB (Linux `/proc`)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run(quick: bool) -> dict[str, Any]:
    sizes = [500, 2_000, 2_000] if quick else [2_000, 6_000, 6_000, 6_000]
    readings: list[dict[str, Any]] = []
    with run_sim(latency_ms=0) as sim, bench_fleet(sim, workers=1) as fleet:
        worker_pid = fleet.workers[0].pid
        start_mb = rss_mb(worker_pid)
        with api_client(fleet.api_url, fleet.api_key) as client:
            for index, size in enumerate(sizes):
                progress.step(f"batch {index + 1}/{len(sizes)}: {size:,} jobs")
                body = ndjson_batch(size, tag=f"mem{index}")
                timing = submit_and_wait(client, body, size, timeout_s=TIMEOUT_S)
                if timing.completed_s is None or timing.counts["succeeded"] != size:
                    raise RuntimeError(f"batch {index + 1} did not complete: {timing.counts}")
                readings.append({"jobs": sum(sizes[: index + 1]), "rss_mb": rss_mb(worker_pid)})
        upstream_calls = sim.stats()["calls"]
    first, last = readings[0], readings[-1]
    ratio = last["rss_mb"] / first["rss_mb"]
    progress.end(
        f"RSS {first['rss_mb']} MiB after {first['jobs']:,} jobs, {last['rss_mb']} after {last['jobs']:,}"
    )
    return {
        "shape": {
            "threads": DEFAULT_THREADS,
            "max_in_flight": DEFAULT_MAX_IN_FLIGHT,
            "batch_sizes": sizes,
            "sim_latency_ms": 0,
        },
        "rss_at_start_mb": start_mb,
        "readings": readings,
        "peak_rss_mb": max(reading["rss_mb"] for reading in readings),
        "upstream_calls": upstream_calls,
        "ratio_last_to_first": round(ratio, 4),
        "summary": [
            summary_row(
                f"worker RSS MiB after {last['jobs']:,} jobs (vs after {first['jobs']:,})",
                last["rss_mb"],
                first["rss_mb"],
                ratio,
            ),
        ],
    }
