"""Spend budgets (issue 14): reserved before each call, settled to the real cost, never passed.

Real Redis for the counters, real SQL for the tenant's policy (set through the operator API),
the simulated upstream for the calls. Prices are the test config's: 1 USD per million input
tokens, 2 USD per million output tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import httpx

from core.services.execute import OutcomeStatus
from core.settings import Settings
from tests.api_calls import job_body
from tests.conftest import InlineWorker, in_process_api, sqlite_only

pytestmark = sqlite_only

MAX_TOKENS = 10
# A job's reservation: its prompt estimate (4 per message + 1 per 4 characters: 5 tokens for
# "q 00") at 1 USD/Mtok, plus MAX_TOKENS output tokens at 2 USD/Mtok.
RESERVED_USD = Decimal(5) / 1_000_000 + Decimal(MAX_TOKENS * 2) / 1_000_000
CAP_USD = RESERVED_USD * 10  # fits 10 jobs' reservations


async def set_budget(settings: Settings, make_key: Callable[..., str], **fields: str) -> None:
    async with in_process_api(settings, make_key(None, scope="operator")) as operator:
        answer = await operator.patch("/v1/admin/tenants/tenant-a", json=fields)
        assert answer.status_code == 200, answer.text


async def test_concurrent_jobs_never_spend_past_the_cap_and_the_rest_fail_budget_exceeded(
    settings: Settings,
    make_key: Callable[..., str],
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
) -> None:
    await set_budget(settings, make_key, budget_usd_day=str(CAP_USD))
    ids = []
    for i in range(50):
        answer = await api_client.post("/v1/jobs", json=job_body(f"q {i:02d}", max_tokens=MAX_TOKENS))
        ids.append(answer.json()["id"])

    outcomes = inline_worker.run_together(ids)

    jobs = [(await api_client.get(f"/v1/jobs/{i}")).json() for i in ids]
    succeeded = [j for j in jobs if j["status"] == "succeeded"]
    refused = [j for j in jobs if j["status"] == "failed"]
    assert {o.status for o in outcomes} <= {OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED}
    assert len(succeeded) >= 10 and len(succeeded) + len(refused) == 50
    assert sum(Decimal(j["cost_usd"]) for j in succeeded) <= CAP_USD
    assert refused, "a budget that fits 10 jobs let all 50 through"
    for job in refused:
        assert job["error"]["type"] == "budget_exceeded"
        assert "tenant tenant-a budget" in job["error"]["message"] and "per day" in job["error"]["message"]
        assert "resets at" in job["error"]["message"]
    usage = (await api_client.get("/v1/usage")).json()
    [day] = [b for b in usage["budgets"] if b["period"] == "day"]
    assert (day["owner"], Decimal(day["limit_usd"])) == ("tenant", CAP_USD)
    assert Decimal(day["spent_usd"]) == sum(Decimal(j["cost_usd"]) for j in succeeded)


async def test_the_sync_path_answers_429_insufficient_quota_over_budget(
    settings: Settings,
    make_key: Callable[..., str],
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
) -> None:
    await set_budget(settings, make_key, budget_usd_month="0")

    answer = await api_client.post(
        "/v1/chat/completions", json=job_body("over budget", max_tokens=MAX_TOKENS)
    )

    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("budget_exceeded", "insufficient_quota")
    assert "per month" in error["message"]


async def test_a_keys_own_budget_applies_beside_its_tenants(
    settings: Settings, make_key: Callable[..., str], inline_worker: InlineWorker
) -> None:
    capped = make_key("tenant-a", budget_usd_day=Decimal(0))
    free = make_key("tenant-a")
    async with (
        in_process_api(settings, capped) as client_capped,
        in_process_api(settings, free) as client_free,
    ):
        refused = (
            await client_capped.post("/v1/jobs", json=job_body("capped", max_tokens=MAX_TOKENS))
        ).json()
        allowed = (await client_free.post("/v1/jobs", json=job_body("free", max_tokens=MAX_TOKENS))).json()
        inline_worker.run_together([refused["id"], allowed["id"]])

        refused = (await client_capped.get(f"/v1/jobs/{refused['id']}")).json()
        allowed = (await client_free.get(f"/v1/jobs/{allowed['id']}")).json()
    assert refused["error"]["type"] == "budget_exceeded" and "key key_" in refused["error"]["message"]
    assert allowed["status"] == "succeeded"


async def test_max_tokens_over_the_models_output_limit_is_refused_at_submission(
    api_client: httpx.AsyncClient,
) -> None:
    answer = await api_client.post("/v1/jobs", json=job_body("huge", max_tokens=1_000_000))

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "max_tokens"
    assert "max_output_tokens" in answer.json()["error"]["message"]
