"""CPU time spent by the processes of a benchmark, per component, from Linux `/proc`.

Wall-clock rates on this shared 2-core machine move with whatever else runs; the CPU time a
component spends per job moves far less, so the benchmarks report both. `CpuMeter` takes
groups of pids (re-listed at each reading, so Postgres backends opened during the run
count) and gives each group's CPU seconds between `start()` and `stop()`. Processes that
exit in between are not counted (a pool's overflow connections, closed on return).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import psycopg


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process so far; None if it is gone (or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_backend_pids(database_url: str) -> list[int]:
    """The Postgres server processes serving connections to this database (not this one)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


class CpuMeter:
    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        readings: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            readings[name] = {}
            for pid in pids():
                cpu_s = process_cpu_s(pid)
                if cpu_s is not None:
                    readings[name][pid] = cpu_s
        return readings

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since `start()` (a pid born meanwhile counts from zero)."""
        after = self._read()
        return {
            name: round(
                sum(cpu_s - self._before.get(name, {}).get(pid, 0.0) for pid, cpu_s in pids.items()), 3
            )
            for name, pids in after.items()
        }
