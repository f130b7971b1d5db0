"""The job pipeline end to end with real processes, and `jobgate dev` as a new user runs it.

The first test runs the API, two worker processes and the simulated upstream as processes
of their own (`tests/fleet.py`) and sends one 1,000-job batch of distinct prompts through
them: every job must end final and succeeded, and every result line must carry the answer
the sim derives from that line's own prompt. The second starts `jobgate dev` in an empty
directory with no `JOBGATE_*` setting (so it starts its own Redis, sim, API and worker on a
SQLite file), runs the curl example it prints through a shell, and stops it with Ctrl-C
(SIGINT): every child it started must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from jobgate.children import free_port
from tests.fleet import answer_text, chat_body, run_fleet, sim_provider
from tests.processes import ServiceProcess, jobgate_env, python_module, wait_until
from tests.sim_process import run_sim

pytestmark = pytest.mark.e2e

JOBS = 1_000


def test_a_1000_job_batch_through_two_worker_processes_gets_every_answer_right(
    redis_url: str, postgres_admin_url: str
) -> None:
    prompts = {f"line-{i:04d}": f"pipeline prompt number {i}" for i in range(JOBS)}
    with run_sim() as sim:
        config = {
            "providers": {"sim": sim_provider(sim)},
            "models": {"fast": {"targets": [{"provider": "sim", "model": "pipeline-echo"}]}},
            "cache": {"default": False, "ttl_s": 60},
        }
        with run_fleet(sim=sim, config=config, workers=2, threads=16) as fleet:
            batch_id = fleet.submit_batch({cid: chat_body("fast", p) for cid, p in prompts.items()})
            batch = fleet.wait_for_batch(batch_id, timeout_s=120)
            results = fleet.batch_results(batch_id)
        calls = sim.stats()["calls"]

    assert batch["status"] == "completed"
    assert batch["counts"]["succeeded"] == JOBS, batch["counts"]
    assert sorted(results) == sorted(prompts)
    wrong = {
        cid: answer_text(line)
        for cid, line in results.items()
        if answer_text(line) != f"echo: {prompts[cid]}"
    }
    assert wrong == {}
    assert calls == JOBS


def _children_of(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_jobgate_dev_answers_its_own_curl_example_and_stops_every_child_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    dev = ServiceProcess.start(
        "dev", python_module("jobgate", "dev", "--port", str(port)), jobgate_env(), cwd=tmp_path
    )
    try:
        dev.wait_for_line("Press Ctrl-C to stop.", timeout_s=90)
        children = _children_of(dev.pid)
        assert len(children) >= 4, f"redis, sim, api and worker should run: {children}"
        curl = next(line for line in dev.lines if line.startswith("curl "))

        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True)

        job = json.loads(answer.stdout)
        assert job["status"] == "succeeded", job
        assert job["result"]["choices"][0]["message"]["content"]
        assert (tmp_path / "var" / "jobgate.db").exists()
        assert (tmp_path / "var" / "dev-api-key").stat().st_mode & 0o777 == 0o600
        os.kill(dev.pid, signal.SIGINT)
        assert dev.process.wait(timeout=30) == 0, dev.diagnostics()
        wait_until(
            lambda: not any(_alive(pid) for pid in children), timeout_s=10, what="dev's children to exit"
        )
    finally:
        dev.stop(grace_s=15)
