"""Routing strategies (issue 15) against real SQL, Redis and the sim: each alias's first choice
follows its `strategy`, the reason is on the job's attempts, and every strategy still falls
back. Jobs run here, many at once, through the real runtime (`InlineWorker.run_together`).
Each test's upstream models are its own (`upstream_model` is unique), so are its sim knobs."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.config import parse_config
from core.domain.chat import ChatRequest
from core.ratelimit.limiter import RateLimiter
from core.redis.keys import Keys
from core.redis.latency import LatencyBoard
from core.services.routing import Router
from core.settings import Settings
from tests.api_calls import job_body
from tests.conftest import InlineWorker, in_process_api, sqlite_only
from tests.sim_process import SimHandle

# Jobs run at once: within the test worker's Redis pool.
AT_ONCE = 50


def sim_entry(sim: SimHandle, **options: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": sim.openai_base_url, "timeout_s": 10, **options}


def routes(upstream_model: str) -> dict[str, Any]:
    m = upstream_model
    return {
        "weighted": {
            "strategy": "weighted",
            "targets": [
                {"provider": "a", "model": f"{m}-w1", "weight": 3},
                {"provider": "a", "model": f"{m}-w2"},
            ],
        },
        "cheapest": {
            "strategy": "lowest_cost",
            "targets": [{"provider": "a", "model": f"{m}-pricey"}, {"provider": "a", "model": f"{m}-cheap"}],
        },
        "quickest": {
            "strategy": "lowest_latency",
            "targets": [{"provider": "a", "model": f"{m}-lat1"}, {"provider": "a", "model": f"{m}-lat2"}],
        },
        "idlest": {
            "strategy": "least_busy",
            "targets": [{"provider": "a", "model": f"{m}-busy1"}, {"provider": "b", "model": f"{m}-busy2"}],
        },
    }


@pytest.fixture
def config_path(tmp_path: Path, sim: SimHandle, upstream_model: str) -> Iterator[Path]:
    m = upstream_model
    config = {
        "providers": {
            "a": sim_entry(sim, free=True, models={f"{m}-busy1": {"rpm": 600}}),
            "b": sim_entry(sim, free=True, models={f"{m}-busy2": {"rpm": 600}}),
        },
        "models": routes(m),
        "pricing": {
            f"{m}-pricey": {"input_per_mtok": 10, "output_per_mtok": 30},
            f"{m}-cheap": {"input_per_mtok": 1, "output_per_mtok": 3},
        },
        "cache": {"default": False},
    }
    path = tmp_path / "jobgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    yield path


async def run_jobs(
    client: httpx.AsyncClient, worker: InlineWorker, model: str, count: int, tag: str = ""
) -> list[dict[str, Any]]:
    ids = []
    for i in range(count):
        answer = await client.post("/v1/jobs", json=job_body(f"{tag}{model} {i}", model=model))
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    for start in range(0, count, AT_ONCE):
        worker.run_together(ids[start : start + AT_ONCE])
    return [(await client.get(f"/v1/jobs/{i}")).json() for i in ids]


def served(jobs: list[dict[str, Any]]) -> Counter[str]:
    assert all(j["status"] == "succeeded" for j in jobs), [j["error"] for j in jobs if j["error"]]
    return Counter(j["served_by"]["model"].rsplit("-", 1)[1] for j in jobs)


async def test_weighted_splits_by_its_weights(
    upstream_model: str, async_redis_client: Any, keys: Keys
) -> None:
    free = {"kind": "openai", "free": True}
    config = parse_config({"providers": {"a": free, "b": free}, "models": routes(upstream_model)})
    seeded = random.Random(1407)
    router = Router(
        config,
        RateLimiter(async_redis_client, keys),
        LatencyBoard(async_redis_client, keys),
        rng=seeded.random,
    )
    request = ChatRequest.from_body(job_body("weights", model="weighted"))

    firsts = Counter([(await router.route("weighted", request))[0].target.model for _ in range(1000)])

    assert abs(firsts[f"{upstream_model}-w1"] / 1000 - 0.75) <= 0.05, firsts


@sqlite_only
async def test_weighted_jobs_use_both_targets_and_say_why(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    jobs = await run_jobs(api_client, inline_worker, "weighted", 200)

    shares = served(jobs)
    assert shares["w1"] > shares["w2"] > 0, shares
    attempts = (await api_client.get(f"/v1/jobs/{jobs[0]['id']}/attempts")).json()["data"]
    assert attempts[0]["route"].startswith("weighted: ")


@sqlite_only
async def test_lowest_cost_picks_the_cheaper_target_and_still_falls_back(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    cheap_first = await run_jobs(api_client, inline_worker, "cheapest", 20)
    sim.configure(models={f"{upstream_model}-cheap": {"fail_rate": 1.0, "fail_status": 500}})
    fell_back = await run_jobs(api_client, inline_worker, "cheapest", 5, tag="down ")

    assert served(cheap_first) == {"cheap": 20}
    assert served(fell_back) == {"pricey": 5}
    attempts = (await api_client.get(f"/v1/jobs/{fell_back[0]['id']}/attempts")).json()["data"]
    assert attempts[0]["route"].startswith("lowest_cost: $") and attempts[-1]["route"] == "fallback 2"


@sqlite_only
async def test_lowest_latency_moves_new_traffic_away_from_a_target_that_slowed_tenfold(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    fast, slow = f"{upstream_model}-lat1", f"{upstream_model}-lat2"
    sim.configure(models={fast: {"latency_ms": 40}, slow: {"latency_ms": 40}})
    both = served(await run_jobs(api_client, inline_worker, "quickest", 40, tag="warm "))
    sim.configure(models={fast: {"latency_ms": 400}})  # lat1 slows tenfold
    slowed_at = time.monotonic()
    # Traffic after the slowdown, within the issue's 10 s, until lat1's slowness has been
    # measured (a call to it since: the average moves per call, ALPHA = 0.2) and a whole round
    # then went to lat2. A round's jobs run together and read the same averages, so a round
    # that went to lat2 before any slow call only says lat2 was a hair quicker at that moment.
    since: Counter[str] = Counter()
    while time.monotonic() - slowed_at < 10:
        round_ = served(await run_jobs(api_client, inline_worker, "quickest", 10, tag=f"{time.monotonic()} "))
        since += round_
        if since["lat1"] > 0 and round_["lat2"] == 10:
            break

    after = served(await run_jobs(api_client, inline_worker, "quickest", 100, tag="after "))

    assert both["lat1"] > 0 and both["lat2"] > 0, both
    assert after["lat2"] >= 90, after


@sqlite_only
async def test_least_busy_spreads_load_over_two_targets_limits_without_a_429(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    busy = [f"{upstream_model}-busy1", f"{upstream_model}-busy2"]
    sim.configure(models={m: {"rpm": 600} for m in busy})

    jobs = await run_jobs(api_client, inline_worker, "idlest", 60)

    shares = served(jobs)
    assert min(shares["busy1"], shares["busy2"]) >= 15, shares
    stats = sim.stats()["models"]
    assert sum(stats[m]["rate_limited"] for m in busy) == 0


@sqlite_only
async def test_providers_show_each_targets_moving_latency_and_share_of_traffic(
    settings: Settings,
    make_key: Callable[..., str],
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    upstream_model: str,
) -> None:
    await run_jobs(api_client, inline_worker, "weighted", 40)

    async with in_process_api(settings, make_key(None, scope="operator")) as operator:
        providers = (await operator.get("/v1/providers")).json()["data"]

    [provider_a] = [p for p in providers if p["provider"] == "a"]
    targets = {t["model"]: t for t in provider_a["targets"]}
    w1, w2 = targets[f"{upstream_model}-w1"], targets[f"{upstream_model}-w2"]
    assert w1["latency_ms"] is not None and w2["latency_ms"] is not None
    assert w1["traffic_share"] > w2["traffic_share"] > 0
    assert w1["traffic_share"] + w2["traffic_share"] == pytest.approx(1.0, abs=0.01)
