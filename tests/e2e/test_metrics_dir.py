"""`jobgate api` and `jobgate worker` remove the temporary Prometheus folder they made.

Without JOBGATE_METRICS_DIR each command keeps its multiprocess files in a
`jobgate-<command>-metrics-*` folder of the system temp directory; a process stopped the
ordinary way (SIGTERM) must not leave it behind. The process runs with TMPDIR pointed at
this test's own folder, so tests running beside it cannot disturb the count.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from jobgate.children import free_port
from tests.processes import ServiceProcess, jobgate_env, python_module

pytestmark = pytest.mark.e2e


def _start(command: str, env: dict[str, str]) -> ServiceProcess:
    """`jobgate <command>`, returned once it serves (the API) or its worker is ready."""
    port = free_port()
    args = {"api": ["--port", str(port)], "worker": ["--processes", "1", "--threads", "2"]}[command]
    process = ServiceProcess.start(command, python_module("jobgate", command, *args), env)
    try:
        if command == "api":
            process.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        else:
            process.wait_for_line("worker ready", timeout_s=30)
    except BaseException:
        process.stop()
        raise
    return process


@pytest.mark.parametrize("command", ["api", "worker"])
def test_command_removes_its_temporary_metrics_folder_when_stopped(
    command: str, sqlite_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = jobgate_env(database_url=sqlite_url, redis_url=redis_url, redis_prefix=redis_prefix)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # set, it would be used instead of a folder of its own
    env["TMPDIR"] = str(tmp_path)
    pattern = f"jobgate-{command}-metrics-*"

    process = _start(command, env)
    try:
        assert len(list(tmp_path.glob(pattern))) == 1
    finally:
        # The worker pool gives its worker 30 s to finish; SIGKILL before then would skip cleanup.
        code = process.stop(grace_s=60)

    assert code in (0, 128 + signal.SIGTERM), "it exited on its own, not killed by a signal"
    assert list(tmp_path.glob(pattern)) == []
