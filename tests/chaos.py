"""A chaos run: one batch against the simulated upstream while workers die and Redis crashes.

`run_chaos(plan)` starts a redis-server of its own (`tests/redis_server.py`), a simulated
upstream with `plan.latency_ms` per call, and a fleet (`tests/fleet.py`: the API and
`plan.workers` worker processes on a fresh Postgres database) with short lease and sweep
settings. It submits `plan.jobs` jobs as one batch; then, until every job is final, a
chaos thread SIGKILLs a random ready worker every few seconds and starts a replacement,
and Redis is crashed (SIGKILL, nothing saved) and restarted empty once, when a share of
the jobs is final. The `ChaosReport` is read from SQL and from the sim's own count of the
calls it answered, so it judges jobgate by what happened, not by what jobgate says.

Used by `tests/e2e/test_chaos.py` (a short run in `make test`) and `bench/chaos.py` (the
full-size run, `make chaos`).
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.fleet import Fleet, run_fleet, sim_provider
from tests.processes import ServiceProcess
from tests.redis_server import RedisServer, own_redis
from tests.sim_process import SimHandle, run_sim

UPSTREAM_MODEL = "chaos-echo"
READY_LINE = "worker ready"


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int
    workers: int = 3
    threads: int = 4
    # Jobs in flight per worker process: bounded, so a run lasts long enough for its kills.
    max_in_flight: int | None = None
    latency_ms: int = 200
    # A kill every `kill_every_s` seconds (uniform in the range), while jobs remain.
    kill_every_s: tuple[float, float] = (2.0, 4.0)
    # Redis is crashed once this share of the jobs is final, and is down for `redis_down_s`.
    redis_crash_at: float = 0.4
    redis_down_s: float = 1.0
    lease_s: float = 5.0
    sweep_interval_s: float = 2.0
    redispatch_after_s: float = 3.0
    # High enough that a job whose worker is killed under it several times still succeeds.
    max_attempts: int = 10
    timeout_s: float = 90.0
    seed: int | None = None

    def settings(self) -> dict[str, str]:
        return {
            "lease_s": str(self.lease_s),
            "sweep_interval_s": str(self.sweep_interval_s),
            "redispatch_after_s": str(self.redispatch_after_s),
            "max_attempts": str(self.max_attempts),
        }


@dataclass
class ChaosReport:
    jobs: int
    finished: bool
    elapsed_s: float
    submit_s: float
    kills: int
    redis_restarts: int
    redis_crashed_at_s: float | None
    last_kill_at_s: float | None
    # From SQL once the run is over.
    counts: dict[str, int] = field(default_factory=dict)
    # {number of successful attempt rows ('succeeded' or 'cached'): number of jobs with that many}
    success_rows_per_job: dict[int, int] = field(default_factory=dict)
    cached_rows: int = 0
    attempts_total: int = 0
    attempts_max: int = 0
    # From the sim: the calls it answered for this run's model.
    upstream_calls: int = 0

    @property
    def retried_attempts(self) -> int:
        """Attempts beyond each job's first: the only work that may call the upstream again."""
        return self.attempts_total - sum(self.counts.values())

    @property
    def extra_upstream_calls(self) -> int:
        return self.upstream_calls - self.jobs

    def problems(self) -> list[str]:
        """What went wrong, if anything: an empty list is a pass."""
        found = []
        if not self.finished:
            found.append("jobs were still unfinished at the time limit")
        if self.counts != {"succeeded": self.jobs}:
            found.append(f"not every job succeeded: {self.counts}")
        if self.success_rows_per_job != {1: self.jobs}:
            found.append(f"jobs by number of recorded successes: {self.success_rows_per_job}")
        if self.cached_rows:
            found.append(f"{self.cached_rows} jobs were served from a cache that is off")
        if not self.jobs <= self.upstream_calls <= self.jobs + self.retried_attempts:
            found.append(
                f"{self.upstream_calls} upstream calls for {self.jobs} jobs"
                f" and {self.retried_attempts} retried attempts"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["success_rows_per_job"] = {str(k): v for k, v in self.success_rows_per_job.items()}
        data["retried_attempts"] = self.retried_attempts
        data["extra_upstream_calls"] = self.extra_upstream_calls
        return data


class WorkerKiller(threading.Thread):
    """Every few seconds: SIGKILL one ready worker of the fleet, start a replacement.

    The next kill is armed only once the replacement is ready (a worker takes seconds to
    start on a loaded machine), so the fleet is never worn down to nothing.
    """

    def __init__(self, fleet: Fleet, every_s: tuple[float, float], rng: random.Random, t0: float) -> None:
        super().__init__(name="worker-killer", daemon=True)
        self.fleet, self.every_s, self.rng, self.t0 = fleet, every_s, rng, t0
        self.stopping = threading.Event()
        self.kills = 0
        self.last_kill_at_s: float | None = None
        self.error: BaseException | None = None

    def _ready(self) -> list[ServiceProcess]:
        return [w for w in self.fleet.workers if w.alive() and any(READY_LINE in line for line in w.lines)]

    def _whole(self) -> bool:
        return all(w in self._ready() for w in self.fleet.workers if w.alive())

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self._whole():
                    self.stopping.wait(0.1)
                    continue
                if self.stopping.wait(self.rng.uniform(*self.every_s)):
                    return
                victim = self.rng.choice(self._ready())
                os.kill(victim.pid, signal.SIGKILL)
                victim.process.wait(timeout=10)
                self.kills += 1
                self.last_kill_at_s = time.monotonic() - self.t0
                self.fleet.start_worker(wait_ready=False)
        except BaseException as exc:  # reported by run_chaos, which fails the run with it
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def config(sim: SimHandle) -> dict[str, Any]:
    """Alias `fast` → the sim; cache off, so every job must call the upstream once."""
    return {
        "providers": {"sim": sim_provider(sim, timeout_s=10)},
        "models": {"fast": {"targets": [{"provider": "sim", "model": UPSTREAM_MODEL}]}},
        "cache": {"default": False, "ttl_s": 60},
    }


def batch_bodies(jobs: int) -> dict[str, dict[str, Any]]:
    return {
        f"chaos-{i:05d}": {
            "model": "fast",
            "messages": [{"role": "user", "content": f"chaos prompt {i}"}],
            "max_tokens": 16,
        }
        for i in range(jobs)
    }


def _unfinished(connection: psycopg.Connection[Any]) -> int:
    row = connection.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()
    return int(row[0]) if row else 0


def _read_outcome(report: ChaosReport, database_url: str, sim: SimHandle) -> None:
    with psycopg.connect(database_url, connect_timeout=5) as connection:
        report.counts = {
            status: int(count)
            for status, count in connection.execute("SELECT status, count(*) FROM jobs GROUP BY status")
        }
        per_job = connection.execute(
            "SELECT n, count(*) FROM ("
            "  SELECT j.id, count(a.id) AS n FROM jobs j LEFT JOIN job_attempts a"
            "    ON a.job_id = j.id AND a.outcome IN ('succeeded', 'cached') GROUP BY j.id"
            ") per_job GROUP BY n"
        )
        report.success_rows_per_job = {int(n): int(count) for n, count in per_job}
        cached = connection.execute("SELECT count(*) FROM job_attempts WHERE outcome = 'cached'").fetchone()
        report.cached_rows = int(cached[0]) if cached else 0
        totals = connection.execute("SELECT coalesce(sum(attempts), 0), coalesce(max(attempts), 0) FROM jobs")
        total, most = totals.fetchone() or (0, 0)
        report.attempts_total, report.attempts_max = int(total), int(most)
    counters = sim.stats()["models"].get(UPSTREAM_MODEL)
    report.upstream_calls = int(counters["calls"]) if counters else 0


def _drive(
    plan: ChaosPlan, fleet: Fleet, redis: RedisServer, on_progress: Callable[[int, int], None] | None
) -> ChaosReport:
    rng = random.Random(plan.seed)
    t0 = time.monotonic()
    fleet.submit_batch(batch_bodies(plan.jobs))
    submit_s = time.monotonic() - t0
    killer = WorkerKiller(fleet, plan.kill_every_s, rng, t0)
    killer.start()
    crashed_at: float | None = None
    restarts = 0
    remaining = plan.jobs
    # One connection for the whole watch: Postgres allows 100 in all, shared with the fleet.
    watch = psycopg.connect(fleet.database_url, autocommit=True, connect_timeout=5)
    try:
        while time.monotonic() - t0 < plan.timeout_s:
            remaining = _unfinished(watch)
            if on_progress is not None:
                on_progress(plan.jobs - remaining, plan.jobs)
            if remaining == 0 or killer.error is not None:
                break
            if crashed_at is None and plan.jobs - remaining >= plan.redis_crash_at * plan.jobs:
                crashed_at = time.monotonic() - t0
                redis.crash()
                killer.stopping.wait(plan.redis_down_s)  # the outage itself, not a wait for a result
                redis.start()
                restarts += 1
            time.sleep(0.2)
    finally:
        watch.close()
        killer.stop()
    if killer.error is not None:
        raise RuntimeError("the worker killer failed") from killer.error
    return ChaosReport(
        jobs=plan.jobs,
        finished=remaining == 0,
        elapsed_s=round(time.monotonic() - t0, 2),
        submit_s=round(submit_s, 2),
        kills=killer.kills,
        redis_restarts=restarts,
        redis_crashed_at_s=None if crashed_at is None else round(crashed_at, 2),
        last_kill_at_s=None if killer.last_kill_at_s is None else round(killer.last_kill_at_s, 2),
    )


def run_chaos(plan: ChaosPlan, on_progress: Callable[[int, int], None] | None = None) -> ChaosReport:
    with (
        tempfile.TemporaryDirectory(prefix="jobgate-chaos-") as workdir,
        own_redis(Path(workdir) / "redis") as redis,
        run_sim(latency_ms=plan.latency_ms) as sim,
        run_fleet(
            sim=sim,
            config=config(sim),
            workers=plan.workers,
            threads=plan.threads,
            max_in_flight=plan.max_in_flight,
            redis_url=redis.url,
            settings=plan.settings(),
        ) as fleet,
    ):
        report = _drive(plan, fleet, redis, on_progress)
        _read_outcome(report, fleet.database_url, sim)
        return report
