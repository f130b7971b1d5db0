"""Nothing lost, nothing doubled, while workers are SIGKILLed and Redis crashes mid-run.

A batch runs against the simulated upstream (200 ms a call) on three worker processes while
a chaos thread kills a random worker every few seconds and starts a replacement, and Redis
(the test's own server) is crashed and restarted empty once (`tests/chaos.py`). Afterwards
every job must be final and succeeded, each with exactly one recorded success, and every
upstream call beyond one per job must be explained by an attempt that was retried.

This is the short form for `make test` (500 jobs, 5 s leases, a sweep every 2 s); the
full-size run (5,000 jobs) is `make chaos` (`bench/chaos.py`).
"""

from __future__ import annotations

import pytest

from tests.chaos import ChaosPlan, run_chaos

pytestmark = pytest.mark.e2e

PLAN = ChaosPlan(jobs=500, workers=3, threads=2, max_in_flight=2, latency_ms=200, timeout_s=90)


def test_batch_survives_killed_workers_and_a_redis_restart_with_every_job_succeeding_once(
    redis_url: str, postgres_admin_url: str
) -> None:
    report = run_chaos(PLAN)
    summary = report.as_dict()

    assert report.kills >= 3, f"the chaos was too gentle to prove anything: {summary}"
    assert report.redis_restarts == 1, summary
    assert report.problems() == [], summary
