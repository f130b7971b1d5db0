"""A busy worker process runs every job of a large batch once, and none waits for the sweeper.

One real worker process, started as `--threads 256` with `JOBGATE_WORKER_MAX_IN_FLIGHT=1000`
(before the event-loop runtime, threads set its concurrency; now up to 1,000 jobs are in
flight on its loop: at least 256 run at once either way), drains one 1,500-job batch on Postgres
while the simulated upstream takes 1 s per call, the shape of `bench/concurrency.py`. The
worker keeps the product's default SQL pool size (`Settings`' own defaults, not the tests'
one connection per thread), as a stock deployment does. Only the pool's timeout is scaled
down with the run, as the other end-to-end figures are: the benchmark that lost jobs ran
90 s on a loaded machine with the 10 s default; this run takes about 25 s, and a starved
wait of 2 s is as rare in it as one of 10 s was in the benchmark's.

The sweeper runs only every 10 minutes here and leases last 20 s, so a job that a step of
the pipeline drops cannot finish within the test: a lost claim leaves it queued for the
sweeper, a lost final write leaves it running until the reaper hands it on and the upstream
is called again. Either shows as a batch not final by the time bound, which is three times
what the upstream latency alone requires plus 20 s of slack for a busy 2-core machine, so it
judges "no job waited for the sweeper or the reaper", not the machine's speed.

Written against the thread-per-job worker, it failed there every time (36-446 of 1,500 jobs
lost to `QueuePool limit ... connection timed out` in claims, final writes and lease renewals);
the runtime's claims and writes go through 3 SQL threads that carry whole groups, so the
pool is never oversubscribed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.settings import Settings
from tests.fleet import Fleet, chat_body, run_fleet, sim_provider
from tests.processes import ServiceProcess
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

JOBS = 1_500
CONCURRENT_JOBS = 256
MAX_IN_FLIGHT = 1_000
LATENCY_MS = 1_000
LEASE_S = 20
SWEEP_INTERVAL_S = 600
# The product's 10 s, scaled to this run's length (see above).
POOL_TIMEOUT_S = 2
# Every job's upstream call, in waves of CONCURRENT_JOBS, three times over, plus slack for
# submitting the batch and for a loaded machine: about 38 s, far below the sweeper's interval.
BOUND_S = JOBS / CONCURRENT_JOBS * LATENCY_MS / 1000 * 3 + 20
# Events the worker logs when a job's run, its lease renewal or the sweep raises.
CRASH_EVENTS = ("run_job_crashed", "lease_renewal_failed", "sweep_failed")


def product_default(setting: str) -> str:
    return str(Settings.model_fields[setting].default)


@pytest.fixture
def slow_sim(redis_url: str, postgres_admin_url: str) -> Iterator[SimHandle]:
    """A simulated upstream of this test's own, answering each call after LATENCY_MS."""
    with run_sim(latency_ms=LATENCY_MS) as sim:
        yield sim


def worker_crashes(worker: ServiceProcess) -> list[str]:
    """The worker's logged crashes, each as its event and the last line of its traceback."""
    crashes = []
    for event in CRASH_EVENTS:
        for record in worker.log_records(event):
            lines = str(record.get("exception", "")).strip().splitlines()
            crashes.append(f"{event}: {lines[-1] if lines else record}")
    return crashes


def describe(crashes: list[str]) -> str:
    return f"the worker logged {len(crashes)} crashes: {sorted(set(crashes))[:3]}"


def wait_for_batch(fleet: Fleet, batch_id: str) -> dict[str, Any]:
    """The batch once every job is final; else a failure naming its counts and the worker's crashes."""
    try:
        return fleet.wait_for_batch(batch_id, timeout_s=BOUND_S)
    except TimeoutError as exc:
        pytest.fail(f"stragglers: {exc}; {describe(worker_crashes(fleet.workers[0]))}")


def test_a_busy_worker_process_runs_every_job_once_with_no_stragglers(slow_sim: SimHandle) -> None:
    config = {
        "providers": {"sim": sim_provider(slow_sim, timeout_s=30)},
        "models": {"fast": {"targets": [{"provider": "sim", "model": "busy-echo"}]}},
        "cache": {"default": False, "ttl_s": 60},
    }
    settings = {
        "db_pool_size": product_default("db_pool_size"),
        "db_max_overflow": product_default("db_max_overflow"),
        "db_pool_timeout_s": str(POOL_TIMEOUT_S),
        "worker_max_in_flight": str(MAX_IN_FLIGHT),
        "lease_s": str(LEASE_S),
        "sweep_interval_s": str(SWEEP_INTERVAL_S),
    }
    prompts = {f"job-{i:04d}": f"busy prompt number {i}" for i in range(JOBS)}

    with run_fleet(
        sim=slow_sim, config=config, workers=1, threads=CONCURRENT_JOBS, settings=settings
    ) as fleet:
        started = time.monotonic()
        batch_id = fleet.submit_batch({cid: chat_body("fast", p) for cid, p in prompts.items()})
        batch = wait_for_batch(fleet, batch_id)
        elapsed_s = time.monotonic() - started
        jobs = fleet.batch_jobs(batch_id)
        crashes = worker_crashes(fleet.workers[0])
    upstream = slow_sim.stats()

    assert crashes == [], describe(crashes)
    assert batch["counts"]["succeeded"] == JOBS, batch["counts"]
    assert upstream["requests"] == JOBS, f"{upstream['requests']} upstream calls for {JOBS} jobs"
    assert upstream["calls"] == JOBS
    ran_more_than_once = {job["custom_id"]: job["attempts"] for job in jobs if job["attempts"] != 1}
    assert ran_more_than_once == {}
    assert elapsed_s <= BOUND_S, f"the batch took {elapsed_s:.1f} s (bound {BOUND_S:.1f} s)"
