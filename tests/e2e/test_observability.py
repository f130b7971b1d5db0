"""Operators' view, end to end: metrics, request ids in logs, usage against the sim's counters."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from core.config import Price
from tests.fleet import chat_body, run_fleet, sim_provider
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

MODEL = "obs-model"
PRICE = Price(input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))


def _config(sim: SimHandle) -> dict:
    return {
        "providers": {"sim": sim_provider(sim)},
        "models": {"obs": {"targets": [{"provider": "sim", "model": MODEL}]}},
        "pricing": {
            MODEL: {
                "input_per_mtok": str(PRICE.input_per_mtok),
                "output_per_mtok": str(PRICE.output_per_mtok),
            }
        },
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
def sim_for_obs():
    with run_sim() as sim:
        yield sim


def test_metrics_count_the_jobs_run_and_the_duplicates_served_without_a_call(
    sim_for_obs: SimHandle, tmp_path: Path
) -> None:
    distinct, copies = 20, 5
    with run_fleet(
        sim=sim_for_obs,
        config=_config(sim_for_obs),
        workers=2,
        threads=8,
        settings={"metrics_dir": str(tmp_path / "metrics")},
    ) as fleet:
        calls_before = sim_for_obs.stats()["models"].get(MODEL, {}).get("calls", 0)
        tag = uuid.uuid4().hex[:8]
        bodies = {
            f"c{i}": chat_body("obs", f"metrics {tag} prompt {i % distinct}")
            for i in range(distinct * copies)
        }
        batch_id = fleet.submit_batch(bodies)
        assert fleet.wait_for_batch(batch_id, timeout_s=60)["counts"]["succeeded"] == distinct * copies
        upstream_calls = sim_for_obs.stats()["models"][MODEL]["calls"] - calls_before
        text = fleet.http.get("/metrics").text

    total = distinct * copies
    assert upstream_calls == distinct
    assert _metric(text, "jobgate_jobs_submitted_total", priority="batch") == total
    assert _metric(text, "jobgate_jobs_finished_total", status="succeeded") == total
    answered_without_call = _metric(text, "jobgate_cache_lookups_total", result="hit") + _metric(
        text, "jobgate_single_flight_collapses_total"
    )
    assert answered_without_call == total - distinct
    assert _metric(
        text, "jobgate_upstream_requests_total", provider="sim", model=MODEL, outcome="succeeded"
    ) == (distinct)
    assert _metric(text, "jobgate_job_duration_seconds_count", priority="batch") == total
    assert _metric(text, "jobgate_queue_depth", queue="jobs-batch") == 0
    assert "jobgate_breaker_state" in text


def test_one_request_id_follows_a_job_from_the_api_log_to_the_worker_log(sim_for_obs: SimHandle) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    with run_fleet(
        sim=sim_for_obs, config=_config(sim_for_obs), workers=1, threads=4, settings={"log_level": "INFO"}
    ) as fleet:
        response = fleet.http.post(
            "/v1/jobs",
            json=chat_body("obs", f"follow me {request_id}"),
            headers={"X-Request-ID": request_id},
        )
        assert response.status_code == 202
        assert response.headers["x-request-id"] == request_id
        job_id = response.json()["id"]
        assert fleet.wait_for_job(job_id, timeout_s=30)["status"] == "succeeded"

        worker = fleet.workers[0]
        worker.wait_for_log("job_finished", job_id=job_id, timeout_s=10)
        api_lines = fleet.api.log_records("job_submitted", job_id=job_id)
        worker_lines = worker.log_records("job_finished", job_id=job_id)
        worker_log = worker.stderr_path.read_text()
    assert [r["request_id"] for r in api_lines] == [request_id]
    assert [r["request_id"] for r in worker_lines] == [request_id]
    assert "follow me" not in worker_log, "prompts must not be logged"


def test_usage_totals_match_the_sims_token_counters_and_the_pricing_table() -> None:
    # A sim of its own, so its counters hold this test's calls only.
    with run_sim() as sim, run_fleet(sim=sim, config=_config(sim), workers=2, threads=8) as fleet:
        bodies = {f"u{i}": chat_body("obs", f"usage prompt number {i} " + "x" * (i % 17)) for i in range(60)}
        batch_id = fleet.submit_batch(bodies)
        assert fleet.wait_for_batch(batch_id, timeout_s=60)["counts"]["succeeded"] == 60
        stats = sim.stats()
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
    assert usage["data"][0]["model"] == MODEL
