"""A fleet of three real worker processes behaves as one client of each provider.

Each test starts its own simulated upstream (so its counters and call times are the test's
alone), an API process and three worker processes on a fresh Postgres database and a Redis
key prefix of their own (`tests/fleet.py`), and judges the fleet by what the upstream saw.

Figures are scaled from the issue's so that each test takes seconds, not minutes: 600 RPM /
60,000 TPM over 2,000 jobs becomes 3,000 RPM / 300,000 TPM over 450 jobs of ~200 tokens
(same 1:100 ratio, about 18 s at the limit, ~24 jobs/s: well inside what three workers on a
busy 2-core machine sustain, so the figure measures the limiter, not the CPU). The full-size
run is `python -m bench.limiter`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fleet import (
    answer_text,
    chat_body,
    clusters,
    job_cost_tokens,
    run_fleet,
    sim_provider,
    token_use,
)
from tests.processes import wait_until
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

WORKERS = 3


@pytest.fixture
def own_sim(redis_url: str, postgres_admin_url: str) -> Iterator[SimHandle]:
    """A simulated upstream for this test alone (the services a fleet needs are checked first)."""
    with run_sim() as sim:
        yield sim


def single_route(sim: SimHandle, model: str, *, cache: bool = False, **provider: Any) -> dict[str, Any]:
    """Config: alias `m` → provider `p` (the sim) → `model`."""
    return {
        "providers": {"p": sim_provider(sim, **provider)},
        "models": {"m": {"targets": [{"provider": "p", "model": model}]}},
        "cache": {"default": cache, "ttl_s": 600},
    }


def padded_prompt(i: int, chars: int) -> str:
    head = f"job {i:05d}: "
    return head + ("the quick brown fox jumps over the lazy dog " * (chars // 40 + 1))[: chars - len(head)]


# --- 1. Limits ----------------------------------------------------------------------------------

RPM, TPM = 3_000, 300_000
LIMIT_JOBS = 450
PROMPT_CHARS = 400


def test_fleet_keeps_within_provider_limits_and_uses_the_budget(own_sim: SimHandle) -> None:
    prompts = {f"job-{i:04d}": padded_prompt(i, PROMPT_CHARS) for i in range(LIMIT_JOBS)}
    cost = max(job_cost_tokens(p) for p in prompts.values())
    assert TPM / cost < RPM, "the token limit must be the binding one"
    own_sim.configure(rpm=RPM, tpm=TPM)
    config = single_route(own_sim, "limited", rpm=RPM, tpm=TPM)

    with run_fleet(sim=own_sim, config=config, workers=WORKERS, threads=8) as fleet:
        batch_id = fleet.submit_batch({cid: chat_body("m", p) for cid, p in prompts.items()})
        batch = fleet.wait_for_batch(batch_id, timeout_s=60)

    assert batch["counts"]["succeeded"] == LIMIT_JOBS
    use = token_use(own_sim.stats(), tpm=TPM)
    assert use.rate_limited == 0, f"the sim answered {use.rate_limited} 429s"
    assert use.calls == LIMIT_JOBS
    assert use.utilisation >= 0.95, (
        f"used {use.tokens} of {use.allowed_tokens:.0f} tokens allowed over {use.duration_s:.1f} s"
    )


# --- 2. Duplicates ------------------------------------------------------------------------------

DUPLICATE_JOBS, DISTINCT_PROMPTS = 1_000, 100


def test_duplicate_prompts_make_one_upstream_call_each(own_sim: SimHandle) -> None:
    config = single_route(own_sim, "dedup", cache=True)
    prompts = {f"job-{i:04d}": f"question number {i % DISTINCT_PROMPTS}" for i in range(DUPLICATE_JOBS)}

    with run_fleet(sim=own_sim, config=config, workers=WORKERS, threads=8) as fleet:
        batch_id = fleet.submit_batch({cid: chat_body("m", p) for cid, p in prompts.items()})
        batch = fleet.wait_for_batch(batch_id, timeout_s=60)
        results = fleet.batch_results(batch_id)

    assert batch["counts"]["succeeded"] == DUPLICATE_JOBS
    assert own_sim.stats()["calls"] <= DISTINCT_PROMPTS
    wrong = {
        cid: answer_text(results[cid])
        for cid, p in prompts.items()
        if answer_text(results[cid]) != f"echo: {p}"
    }
    assert not wrong, f"{len(wrong)} jobs got another prompt's answer, e.g. {list(wrong.items())[:3]}"


# --- 3. Fallback and the breaker ----------------------------------------------------------------

COOLDOWN_S = 3.0
FALLBACK_JOBS = 600
FALLBACK_LATENCY_MS = 200


def test_fallback_serves_jobs_while_primary_fails_and_breaker_probes_once(own_sim: SimHandle) -> None:
    """12 threads at 200 ms per fallback call: about 60 jobs/s for ~10 s, three cool-downs."""
    own_sim.configure(
        models={
            "primary-model": {"fail_rate": 1.0, "fail_status": 500},
            "fallback-model": {"latency_ms": FALLBACK_LATENCY_MS},
        }
    )
    breaker = {"failures": 5, "window_s": 60, "cooldown_s": COOLDOWN_S}
    config = {
        "providers": {
            "primary": sim_provider(own_sim, breaker=breaker),
            "fallback": sim_provider(own_sim),
        },
        "models": {
            "m": {
                "targets": [
                    {"provider": "primary", "model": "primary-model"},
                    {"provider": "fallback", "model": "fallback-model"},
                ]
            }
        },
        "cache": {"default": False},
    }
    prompts = {f"job-{i:04d}": f"fallback prompt {i}" for i in range(FALLBACK_JOBS)}

    with run_fleet(sim=own_sim, config=config, workers=WORKERS, threads=4, max_in_flight=4) as fleet:
        batch_id = fleet.submit_batch({cid: chat_body("m", p) for cid, p in prompts.items()})
        batch = fleet.wait_for_batch(batch_id, timeout_s=60)
        jobs = fleet.batch_jobs(batch_id)

    assert batch["counts"]["succeeded"] == FALLBACK_JOBS
    served_by = {(job["served_by"]["provider"], job["served_by"]["model"]) for job in jobs}
    assert served_by == {("fallback", "fallback-model")}
    assert all(answer_text(job) == f"echo: {prompts[job['custom_id']]}" for job in jobs)

    primary = [call["t"] for call in own_sim.calls(model="primary-model")]
    burst, *probes = clusters(primary, gap_s=1.0)
    # Before the breaker opened: at most every in-flight job's first try and one retry each.
    assert 5 <= len(burst) <= 2 * WORKERS * 4, f"initial burst of {len(burst)} calls"
    assert len(probes) >= 2, f"expected a probe per cool-down over the run, saw {len(probes)}"
    assert all(len(group) == 1 for group in probes), f"more than one probe per cool-down: {probes}"
    probe_times = [group[0] for group in probes]
    # The breaker cannot open before the fifth failure arrived, and stays shut for a cool-down.
    opened_at_or_after = sorted(burst)[4]
    gaps = [b - a for a, b in zip([opened_at_or_after, *probe_times], probe_times, strict=False)]
    assert all(gap >= COOLDOWN_S - 0.01 for gap in gaps), f"a probe came before the cool-down ended: {gaps}"
    assert all(gap <= COOLDOWN_S + 1.5 for gap in gaps[1:]), f"probes lagged the cool-down: {gaps}"


# --- 4. Retry-After -----------------------------------------------------------------------------

RETRY_AFTER_S = 5
PAUSED_JOBS = 60


def test_retry_after_pauses_the_provider_fleet_wide(own_sim: SimHandle) -> None:
    """One 429 with Retry-After: 5; meanwhile a batch reaches all three workers; none calls early."""
    model = "pausing"
    own_sim.configure(models={model: {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": RETRY_AFTER_S}})
    config = single_route(own_sim, model)

    with run_fleet(sim=own_sim, config=config, workers=WORKERS, threads=4) as fleet:
        first = fleet.submit_job(chat_body("m", "the one that meets the 429"))
        wait_until(
            lambda: any(call["status"] == 429 for call in own_sim.calls(model=model)),
            timeout_s=10,
            what="the sim's 429",
        )
        own_sim.configure(models={model: {"fail_rate": 0}})
        prompts = {f"job-{i:03d}": f"paused prompt {i}" for i in range(PAUSED_JOBS)}
        batch_id = fleet.submit_batch({cid: chat_body("m", p) for cid, p in prompts.items()})
        batch = fleet.wait_for_batch(batch_id, timeout_s=30)
        first = fleet.wait_for_job(first["id"], timeout_s=10)
        refused = jobs_refused_while_paused(fleet.database_url)

    assert batch["counts"]["succeeded"] == PAUSED_JOBS
    assert first["status"] == "succeeded"
    calls = own_sim.calls(model=model)
    rejected = [call["t"] for call in calls if call["status"] == 429]
    assert len(rejected) == 1, f"{len(rejected)} calls met the 429 fault"
    after = [call["t"] - rejected[0] for call in calls if call["t"] > rejected[0]]
    assert len(after) == PAUSED_JOBS + 1
    assert min(after) >= RETRY_AFTER_S - 0.01, f"a call reached the provider {min(after):.2f} s after the 429"
    assert min(after) <= RETRY_AFTER_S + 2.5, f"the fleet resumed only {min(after):.2f} s after the 429"
    # The batch really was tried (and refused) during the pause, not merely queued behind it.
    assert refused >= PAUSED_JOBS // 2, f"only {refused} jobs met the pause"


def jobs_refused_while_paused(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT job_id) FROM job_attempts"
            " WHERE outcome = 'rate_limit_wait' AND error_message = 'provider paused'"
        ).fetchone()
    assert row is not None
    return int(row[0])


# --- 5. Priority --------------------------------------------------------------------------------

SATURATING_RPM = 1_200
SATURATING_JOBS = 600
INTERACTIVE_DEADLINE_S = 5.0


def test_interactive_job_is_not_stuck_behind_a_saturating_batch(own_sim: SimHandle) -> None:
    """A batch of 30 s of work at 1,200 RPM is running; an interactive job still answers at once."""
    own_sim.configure(rpm=SATURATING_RPM)
    config = single_route(own_sim, "shared", rpm=SATURATING_RPM)
    prompts = {f"job-{i:04d}": f"batch prompt {i}" for i in range(SATURATING_JOBS)}

    with run_fleet(sim=own_sim, config=config, workers=WORKERS, threads=8) as fleet:
        batch_id = fleet.submit_batch({cid: chat_body("m", p) for cid, p in prompts.items()})
        own_sim.wait_for_stats(lambda stats: stats["calls"] >= SATURATING_RPM // 60 * 2, timeout_s=20)
        started = time.monotonic()
        job = fleet.submit_job(chat_body("m", "an interactive question", priority="interactive"))
        job = fleet.wait_for_job(job["id"], timeout_s=30)
        latency_s = time.monotonic() - started
        batch = fleet.batch(batch_id)

    assert job["status"] == "succeeded"
    assert answer_text(job) == "echo: an interactive question"
    assert latency_s <= INTERACTIVE_DEADLINE_S, f"the interactive job took {latency_s:.2f} s"
    assert batch["counts"]["queued"] + batch["counts"]["running"] > SATURATING_JOBS // 2, (
        "the batch was not saturating the provider when the interactive job ran"
    )
    assert own_sim.stats()["rate_limited"] == 0


# --- 4. Per-model limits ------------------------------------------------------------------------

MODEL_TPM = 150_000  # each model's own budget, as OpenAI limits models separately
MODEL_JOBS = 225  # per model: ~18 s of its budget at ~200 tokens a job


def test_two_models_of_one_provider_each_use_their_own_budget_without_a_429(own_sim: SimHandle) -> None:
    """The sim limits every model separately (its buckets are per key and model), as OpenAI
    does; the config gives each model its own `tpm` under `providers.p.models`. Both run at
    once, each saturating its own budget: one model's bookings never hold the other back."""
    models = ("model-a", "model-b")
    own_sim.configure(tpm=MODEL_TPM)
    config = {
        "providers": {"p": sim_provider(own_sim, models={m: {"tpm": MODEL_TPM} for m in models})},
        "models": {m: {"targets": [{"provider": "p", "model": m}]} for m in models},
        "cache": {"default": False},
    }
    requests = {
        f"{m}-{i:04d}": chat_body(m, padded_prompt(i, PROMPT_CHARS))
        for m in models
        for i in range(MODEL_JOBS)
    }

    with run_fleet(sim=own_sim, config=config, workers=WORKERS, threads=8) as fleet:
        batch = fleet.wait_for_batch(fleet.submit_batch(requests), timeout_s=90)

    assert batch["counts"]["succeeded"] == len(requests)
    stats = own_sim.stats()
    assert stats["rate_limited"] == 0, f"the sim answered {stats['rate_limited']} 429s"
    for model in models:
        counters = stats["models"][model]
        times = [c["t"] for c in own_sim.calls(model=model) if c["status"] == 200]
        use = token_use(
            {
                "calls": counters["calls"],
                "rate_limited": counters["rate_limited"],
                "input_tokens": counters["input_tokens"],
                "output_tokens": counters["output_tokens"],
                "first_call_at": min(times),
                "last_call_at": max(times),
            },
            tpm=MODEL_TPM,
        )
        assert use.calls == MODEL_JOBS
        assert use.utilisation >= 0.95, f"{model} used {use.tokens} of {use.allowed_tokens:.0f} tokens"
