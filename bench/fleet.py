"""The deployment a benchmark measures, on top of the end-to-end tests' fleet (`tests/fleet.py`).

`bench_fleet(sim, workers=)` is `tests.fleet.run_fleet` (fresh Postgres database, Redis
prefix, API + worker processes, all stopped by pid) with the benchmarks' config: alias `fast`
→ the sim, cache off (every job calls upstream), and the product's defaults for everything a
deployment would leave alone: consumer threads, jobs in flight per process, and the SQL pool
per process (10 + 20 overflow) rather than the tests' one-connection-per-thread. A benchmark
whose figure prescribes a setting (the scale-out run's cap of 100 in flight) passes it.
`start_processes` adds more processes (the no-op baseline workers) on the same Redis prefix.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from core.settings import Settings
from tests.fleet import Fleet, run_fleet, sim_provider
from tests.processes import ServiceProcess, jobgate_env, python_module
from tests.sim_process import SimHandle

ALIAS = "fast"
UPSTREAM_MODEL = "bench-echo"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
# The product's defaults (core/settings.py), spelled out so a change there shows up here.
PRODUCT_POOL = {"db_pool_size": "10", "db_max_overflow": "20"}
# The tests' processes look for work (and a stop) every 100 ms, to stop fast
# (`tests.processes.jobgate_env`); the benchmarks run the product's default.
PRODUCT_DEFAULTS = {
    **PRODUCT_POOL,
    "worker_idle_poll_ms": str(Settings.model_fields["worker_idle_poll_ms"].default),
}
# Consumer threads per job queue: `tests.fleet.run_fleet` always passes `--threads`, so the
# benchmarks pass the product's default rather than a number of their own.
DEFAULT_THREADS = int(Settings.model_fields["worker_threads"].default)
DEFAULT_MAX_IN_FLIGHT = int(Settings.model_fields["worker_max_in_flight"].default)


def bench_config(sim: SimHandle) -> dict[str, object]:
    return {
        "providers": {"sim": sim_provider(sim, timeout_s=30)},
        "models": {ALIAS: {"targets": [{"provider": "sim", "model": UPSTREAM_MODEL}]}},
        "cache": {"default": False, "ttl_s": 60},
    }


@contextmanager
def bench_fleet(
    sim: SimHandle,
    *,
    workers: int,
    threads: int = DEFAULT_THREADS,
    max_in_flight: int | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[Fleet]:
    """`max_in_flight`: the workers' `--max-in-flight` (None: the product's default)."""
    with run_fleet(
        sim=sim,
        config=bench_config(sim),
        workers=workers,
        threads=threads,
        max_in_flight=max_in_flight,
        settings={**PRODUCT_DEFAULTS, **(settings or {})},
        startup_timeout_s=STARTUP_TIMEOUT_S,
    ) as fleet:
        yield fleet


def start_processes(
    fleet: Fleet, module: str, *, count: int, threads: int, ready: str
) -> list[ServiceProcess]:
    """`count` x `python -m <module> --threads N` on the fleet's Redis prefix, once all are ready."""
    env = jobgate_env(redis_url=fleet.redis_url, redis_prefix=fleet.redis_prefix, log_level="WARNING")
    started = [
        ServiceProcess.start(f"{module}-{i}", python_module(module, "--threads", str(threads)), env)
        for i in range(count)
    ]
    try:
        for process in started:
            process.wait_for_line(ready, timeout_s=STARTUP_TIMEOUT_S)
    except BaseException:
        stop_processes(started)
        raise
    return started


def stop_processes(processes: Iterable[ServiceProcess]) -> None:
    """SIGTERM all at once, then wait for each (SIGKILL after the grace period)."""
    chosen = list(processes)
    for process in chosen:
        if process.alive():
            process.process.send_signal(signal.SIGTERM)
    for process in chosen:
        with suppress(subprocess.TimeoutExpired):
            process.process.wait(timeout=STOP_GRACE_S)
        process.stop(grace_s=1)
