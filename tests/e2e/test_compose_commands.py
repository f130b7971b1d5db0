"""The compose file's own commands, with its own environment, run a job (Docker cannot run here).

Each jobgate service of docker-compose.yml (migrate, sim, api, worker) is started as a process
of this machine, its command and environment taken from the file; only what names the compose
network changes: hosts become 127.0.0.1, ports free ones, the database a fresh empty one (the
`migrate` service creates the schema), Redis the test's prefix, and the mounted
`jobgate.example.yaml` a copy pointing at the local sim. The services' health checks run as
written, against those processes.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobgate.children import free_port
from tests.compose import LocalDeployment, command, load_compose, option
from tests.processes import PROJECT_ROOT, ServiceProcess, stop_all, wait_until

pytestmark = pytest.mark.e2e

STARTUP_S = 90


def _passes(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def deployment(empty_postgres_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> LocalDeployment:
    services = load_compose()["services"]
    container_ports = [
        int(option(command(services["api"]), "--port")),
        int(option(command(services["worker"]), "--metrics-port")),
        int(option(command(services["sim"]), "--port")),
    ]
    ports = {port: free_port() for port in container_ports}
    sim_port = container_ports[2]
    example = (PROJECT_ROOT / "jobgate.example.yaml").read_text()
    assert f"http://sim:{sim_port}" in example
    config_path = tmp_path / "jobgate.yaml"
    config_path.write_text(example.replace(f"http://sim:{sim_port}", f"http://127.0.0.1:{ports[sim_port]}"))
    (tmp_path / "tmp").mkdir()
    return LocalDeployment(
        database_url=empty_postgres_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        config_path=config_path,
        ports=ports,
        temp_dir=tmp_path / "tmp",
    )


@pytest.fixture
def running(deployment: LocalDeployment) -> Iterator[dict[str, ServiceProcess]]:
    """migrate to completion, then sim, api and worker, each up by its own signal."""
    migrate = subprocess.run(
        deployment.argv("migrate"), env=deployment.env("migrate"), capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    started: dict[str, ServiceProcess] = {}
    try:
        for name in ("sim", "api", "worker"):
            started[name] = ServiceProcess.start(name, deployment.argv(name), deployment.env(name))
        started["sim"].wait_for_line("sim listening on", timeout_s=STARTUP_S)
        for name in ("api", "worker"):
            service = started[name]

            def healthy(name: str = name, service: ServiceProcess = service) -> bool:
                if not service.alive():
                    raise RuntimeError(f"{name} exited while starting; {service.diagnostics()}")
                return _passes(deployment.healthcheck(name))

            wait_until(healthy, timeout_s=STARTUP_S, interval_s=0.5, what=f"{name}'s compose health check")
        yield started
    finally:
        stop_all(list(started.values()), grace_s=60)


def test_the_compose_files_commands_run_a_job_with_its_environment(
    deployment: LocalDeployment, running: dict[str, ServiceProcess]
) -> None:
    keys = subprocess.run(
        [*deployment.argv("api")[:3], "keys", "create", "--tenant", "compose"],
        env=deployment.env("api"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = keys.stdout.strip().splitlines()[-1]
    api_port = deployment.ports[int(option(command(deployment.compose["services"]["api"]), "--port"))]
    with httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {key}"}, timeout=90
    ) as http:
        body = {"model": "fast", "messages": [{"role": "user", "content": "through the compose commands"}]}
        submitted = http.post("/v1/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job = http.get(f"/v1/jobs/{submitted.json()['id']}", params={"wait": 60}).json()
        assert job["status"] == "succeeded", job
        assert job["result"]["choices"][0]["message"]["content"].endswith("through the compose commands")
        assert job["served_by"] == {"provider": "sim-openai", "model": "gpt-4o-mini"}
        assert float(job["cost_usd"]) > 0, "the example's prices apply"

        metrics = http.get("/metrics").text
    assert re.search(r'^jobgate_limiter_headroom\{budget="rpm",provider="sim-openai"\} ', metrics, re.M)

    worker_port = deployment.ports[
        int(option(command(deployment.compose["services"]["worker"]), "--metrics-port"))
    ]

    def worker_counted() -> bool:
        text = httpx.get(f"http://127.0.0.1:{worker_port}/metrics").text
        return 'jobgate_jobs_finished_total{status="succeeded"} 1.0' in text

    wait_until(worker_counted, timeout_s=30, what="the worker's metrics port to count the job")


def test_a_worker_with_a_bad_config_exits_naming_the_key_before_starting_any_process(
    deployment: LocalDeployment,
) -> None:
    deployment.config_path.write_text(deployment.config_path.read_text().replace("gpt-4o-mini:", "gpt-4o:"))
    worker = subprocess.run(
        deployment.argv("worker"), env=deployment.env("worker"), capture_output=True, text=True, timeout=120
    )
    assert worker.returncode == 2
    assert "pricing.gpt-4o-mini" in worker.stderr
    assert "worker ready" not in worker.stdout
