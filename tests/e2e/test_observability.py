"""Operators' view, end to end: metrics, request ids in logs, usage against the sim's counters.

One fleet (API, two workers, a sim) serves the module; each test is a tenant of its own with
an upstream model of its own, and reads /metrics' counters as their change over the test."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from core.config import Price
from tests.fleet import Fleet, chat_body, run_fleet, sim_provider
from tests.processes import wait_until
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

MODEL = "obs-model"
USAGE_MODEL = "obs-usage-model"
PRICE = Price(input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))


def _config(sim: SimHandle) -> dict:
    price = {"input_per_mtok": str(PRICE.input_per_mtok), "output_per_mtok": str(PRICE.output_per_mtok)}
    return {
        "providers": {"sim": sim_provider(sim)},
        "models": {
            "obs": {"targets": [{"provider": "sim", "model": MODEL}]},
            "usage": {"targets": [{"provider": "sim", "model": USAGE_MODEL}]},
        },
        "pricing": {MODEL: price, USAGE_MODEL: price},
    }


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample; 0 when the series was never written."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-z_]+)(\{(.*)\})? ([0-9.e+-]+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return 0.0


@pytest.fixture(scope="module")
def sim_for_obs() -> Iterator[SimHandle]:
    with run_sim() as sim:
        yield sim


@pytest.fixture(scope="module")
def fleet(sim_for_obs: SimHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One fleet for the module, logging at INFO, its metrics in a folder of its own. Each test
    has an alias and upstream model of its own (so the sim's per-model counters are its own)
    and works as a tenant of its own; counters read from /metrics are taken as the change
    over the test."""
    metrics_dir = tmp_path_factory.mktemp("obs-metrics")
    with run_fleet(
        sim=sim_for_obs,
        config=_config(sim_for_obs),
        workers=2,
        threads=8,
        settings={"metrics_dir": str(metrics_dir), "log_level": "INFO"},
    ) as deployment:
        yield deployment


@pytest.fixture
def tenant(fleet: Fleet) -> Iterator[Fleet]:
    with fleet.as_tenant(f"obs-{uuid.uuid4().hex[:8]}") as view:
        yield view


class Metrics:
    """Samples of the fleet's /metrics now, minus what they were when this was made."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.before = fleet.http.get("/metrics").text

    def now(self) -> str:
        return str(self.fleet.http.get("/metrics").text)

    def delta(self, text: str, name: str, **labels: str) -> float:
        return _metric(text, name, **labels) - _metric(self.before, name, **labels)


def test_metrics_count_the_jobs_run_and_the_duplicates_served_without_a_call(
    sim_for_obs: SimHandle, tenant: Fleet
) -> None:
    distinct, copies = 20, 5
    fleet = tenant
    metrics = Metrics(fleet)
    calls_before = sim_for_obs.stats()["models"].get(MODEL, {}).get("calls", 0)
    tag = uuid.uuid4().hex[:8]
    bodies = {
        f"c{i}": chat_body("obs", f"metrics {tag} prompt {i % distinct}") for i in range(distinct * copies)
    }
    batch_id = fleet.submit_batch(bodies)
    assert fleet.wait_for_batch(batch_id, timeout_s=60)["counts"]["succeeded"] == distinct * copies
    upstream_calls = sim_for_obs.stats()["models"][MODEL]["calls"] - calls_before
    text = metrics.now()

    total = distinct * copies
    assert upstream_calls == distinct
    assert metrics.delta(text, "jobgate_jobs_submitted_total", priority="batch") == total
    assert metrics.delta(text, "jobgate_jobs_finished_total", status="succeeded") == total
    answered_without_call = metrics.delta(text, "jobgate_cache_lookups_total", result="hit") + metrics.delta(
        text, "jobgate_single_flight_collapses_total"
    )
    assert answered_without_call == total - distinct
    assert metrics.delta(
        text, "jobgate_upstream_requests_total", provider="sim", model=MODEL, outcome="succeeded"
    ) == (distinct)
    assert metrics.delta(text, "jobgate_job_duration_seconds_count", priority="batch") == total
    assert _metric(text, "jobgate_queue_depth", queue="jobs-batch") == 0
    assert "jobgate_breaker_state" in text


def test_one_request_id_follows_a_job_from_the_api_log_to_the_worker_log(tenant: Fleet) -> None:
    fleet = tenant
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    response = fleet.http.post(
        "/v1/jobs",
        json=chat_body("obs", f"follow me {request_id}"),
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == request_id
    job_id = response.json()["id"]
    assert fleet.wait_for_job(job_id, timeout_s=30)["status"] == "succeeded"

    # Whichever worker ran it logged its end.
    wait_until(
        lambda: any(worker.log_records("job_finished", job_id=job_id) for worker in fleet.workers),
        timeout_s=10,
        what="a worker to log the job's end",
    )
    api_lines = fleet.api.log_records("job_submitted", job_id=job_id)
    worker_lines = [r for worker in fleet.workers for r in worker.log_records("job_finished", job_id=job_id)]
    worker_log = "".join(worker.stderr_path.read_text() for worker in fleet.workers)
    assert [r["request_id"] for r in api_lines] == [request_id]
    assert [r["request_id"] for r in worker_lines] == [request_id]
    assert "follow me" not in worker_log, "prompts must not be logged"


def test_usage_totals_match_the_sims_token_counters_and_the_pricing_table(
    sim_for_obs: SimHandle, tenant: Fleet
) -> None:
    # A model of this test's own, so the sim's counters for it hold this test's calls only.
    fleet = tenant
    bodies = {f"u{i}": chat_body("usage", f"usage prompt number {i} " + "x" * (i % 17)) for i in range(60)}
    batch_id = fleet.submit_batch(bodies)
    assert fleet.wait_for_batch(batch_id, timeout_s=60)["counts"]["succeeded"] == 60
    stats = sim_for_obs.stats()["models"][USAGE_MODEL]
    usage = fleet.http.get("/v1/usage").json()
    by_batch = fleet.http.get("/v1/usage", params={"group_by": "batch"}).json()
    total = usage["total"]
    assert total["requests"] == stats["calls"] == 60
    assert total["input_tokens"] == stats["input_tokens"]
    assert total["output_tokens"] == stats["output_tokens"]
    expected_cost = (
        PRICE.input_per_mtok * stats["input_tokens"] + PRICE.output_per_mtok * stats["output_tokens"]
    ) / Decimal(1_000_000)
    assert Decimal(total["cost_usd"]) == expected_cost
    assert [row["batch"] for row in by_batch["data"]] == [batch_id]
    assert usage["data"][0]["model"] == USAGE_MODEL
