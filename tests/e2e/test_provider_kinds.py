"""Every provider kind end to end: the README's config, run by a real fleet against the sim.

The fleet (API and a worker process, `tests/fleet.py`) runs on the YAML block of the README's
"Provider kinds" section as it is written, with only each `endpoint` and `base_url` pointed at
the simulated upstream, which speaks Azure's deployment path and Gemini's OpenAI-compatible
path beside OpenAI's and Anthropic's. Each key is a distinct value in the environment variable
the block names, so the sim's record of each request (`GET /sim/requests`: path, query,
credential headers, key) shows what went over the wire. Jobs are read back through the API:
who served them, their usage as the sim counted it, their cost at the block's prices, and
their errors in jobgate's words. Beside the block, the fixture adds an OpenAI and an Anthropic
provider and an alias falling back from Azure to OpenAI to Anthropic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fleet import Fleet, completion_tokens, prompt_tokens, run_fleet
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
CANARY = "org-Kinds4Canary"
MILLION = Decimal(1_000_000)


def readme_provider_kinds() -> dict[str, Any]:
    """The YAML block of the README's "Provider kinds" section."""
    section = README.read_text().split("### Provider kinds", 1)[1]
    config: dict[str, Any] = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    return config


def aimed_at(sim: SimHandle, config: dict[str, Any]) -> dict[str, Any]:
    """The config with every provider's endpoint or base_url pointed at the sim."""
    for provider in config["providers"].values():
        if provider["kind"] == "azure":
            provider["endpoint"] = sim.azure_endpoint
        elif provider["kind"] == "gemini":
            provider["base_url"] = sim.gemini_base_url
        elif provider["kind"] == "openai":
            provider["base_url"] = sim.openai_base_url
        else:
            provider["base_url"] = sim.anthropic_base_url
    return config


def fleet_config(sim: SimHandle) -> dict[str, Any]:
    config = readme_provider_kinds()
    config["providers"].update(
        openai={"kind": "openai", "api_key_env": "OPENAI_API_KEY"},
        anthropic={"kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"},
    )
    config["models"].update(
        chain={
            "targets": [
                {"provider": "azure", "model": "chain-4o", "deployment": "chain-4o-prod"},
                {"provider": "openai", "model": "chain-4o-mini"},
                {"provider": "anthropic", "model": "chain-haiku"},
            ]
        },
        guarded={"targets": [{"provider": "azure", "model": "guarded-4o"}]},
        waiting={"targets": [{"provider": "gemini", "model": "gemini-wait"}]},
    )
    for model, (input_usd, output_usd) in {
        "chain-4o": ("2.50", "10.00"),
        "chain-4o-mini": ("0.15", "0.60"),
        "chain-haiku": ("1.00", "5.00"),
        "guarded-4o": ("2.50", "10.00"),
        "gemini-wait": ("0.30", "2.50"),
    }.items():
        config["pricing"][model] = {"input_per_mtok": input_usd, "output_per_mtok": output_usd}
    config["cache"] = {"default": False, "ttl_s": 60}
    return aimed_at(sim, config)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with run_sim() as handle:
        yield handle


@pytest.fixture(scope="module")
def provider_keys() -> Iterator[dict[str, str]]:
    """A distinct key in each environment variable the config names (the fleet inherits them)."""
    names = [
        "AZURE_OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "DEEPSEEK_API_KEY",
        "OPENROUTER_API_KEY",
        "VLLM_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
    ]
    keys = {name: f"e2e-{name.lower()}-{os.urandom(4).hex()}" for name in names}
    with pytest.MonkeyPatch.context() as patch:
        for name, key in keys.items():
            patch.setenv(name, key)
        yield keys


@pytest.fixture(scope="module")
def config(sim: SimHandle) -> dict[str, Any]:
    return fleet_config(sim)


@pytest.fixture(scope="module")
def fleet(
    sim: SimHandle,
    config: dict[str, Any],
    provider_keys: dict[str, str],
    redis_url: str,
    postgres_admin_url: str,
) -> Iterator[Fleet]:
    with run_fleet(
        sim=sim,
        config=config,
        workers=1,
        threads=4,
        redis_url=redis_url,
        postgres_admin_url=postgres_admin_url,
    ) as running:
        yield running


def run_job(fleet: Fleet, model: str, text: str) -> dict[str, Any]:
    job = fleet.submit_job({"model": model, "messages": [{"role": "user", "content": text}]})
    return fleet.wait_for_job(job["id"], timeout_s=60)


def attempts(fleet: Fleet, job: dict[str, Any]) -> list[dict[str, Any]]:
    response = fleet.http.get(f"/v1/jobs/{job['id']}/attempts")
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def priced(config: dict[str, Any], model: str, usage: dict[str, int]) -> Decimal:
    price = config["pricing"][model]
    return (
        Decimal(str(price["input_per_mtok"])) * usage["input_tokens"]
        + Decimal(str(price["output_per_mtok"])) * usage["output_tokens"]
    ) / MILLION


def counted_by_sim(sim: SimHandle, model: str) -> dict[str, int]:
    counters = sim.stats()["models"][model]
    return {"input_tokens": counters["input_tokens"], "output_tokens": counters["output_tokens"]}


def assert_served(job: dict[str, Any], provider: str, model: str, text: str) -> None:
    assert job["status"] == "succeeded", job
    assert job["served_by"] == {"provider": provider, "model": model}
    assert job["result"]["choices"][0]["message"]["content"] == f"echo: {text}"


# --- Azure ----------------------------------------------------------------------------------------


def test_an_azure_job_goes_to_its_deployment_with_the_key_in_api_key_and_is_priced_as_its_model(
    fleet: Fleet, sim: SimHandle, config: dict[str, Any], provider_keys: dict[str, str]
) -> None:
    job = run_job(fleet, "gpt-4o", "hello azure")

    assert_served(job, "azure", "gpt-4o", "hello azure")
    assert job["result"]["model"] == "gpt-4o-prod"  # what Azure said ran: the deployment's model
    [seen] = sim.requests("gpt-4o-prod")
    assert seen["path"] == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert (seen["auth_headers"], seen["key"]) == (["api-key"], provider_keys["AZURE_OPENAI_API_KEY"])
    assert job["usage"] == counted_by_sim(sim, "gpt-4o-prod")
    assert job["usage"] == {
        "input_tokens": prompt_tokens("hello azure"),
        "output_tokens": completion_tokens("hello azure"),
    }
    assert Decimal(job["cost_usd"]) == priced(config, "gpt-4o", job["usage"]) > 0


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        (
            "filter_prompt: a violent prompt",
            "azure answered 400 (refused by its content filter), request id req_",
        ),
        ("filter_answer: a violent answer", "azure's content filter stopped the answer"),
    ],
)
def test_azures_content_filter_fails_the_job_content_filter_without_a_retry(
    fleet: Fleet, prompt: str, words: str
) -> None:
    job = run_job(fleet, "guarded", prompt)

    assert job["status"] == "failed"
    assert job["error"]["type"] == "content_filter"
    assert job["error"]["message"].startswith(words)
    assert "content management policy" not in json.dumps(job)
    assert [(a["provider"], a["outcome"]) for a in attempts(fleet, job)] == [("azure", "content_filter")]


# --- Gemini ---------------------------------------------------------------------------------------


def test_a_gemini_job_goes_to_the_openai_compatible_path_with_a_bearer_key_and_is_priced(
    fleet: Fleet, sim: SimHandle, config: dict[str, Any], provider_keys: dict[str, str]
) -> None:
    job = run_job(fleet, "flash", "hello gemini")

    assert_served(job, "gemini", "gemini-2.5-flash", "hello gemini")
    [seen] = sim.requests("gemini-2.5-flash")
    assert (seen["path"], seen["query"]) == ("/v1beta/openai/chat/completions", "")
    assert (seen["auth_headers"], seen["key"]) == (["authorization"], provider_keys["GEMINI_API_KEY"])
    assert job["usage"] == counted_by_sim(sim, "gemini-2.5-flash")
    assert Decimal(job["cost_usd"]) == priced(config, "gemini-2.5-flash", job["usage"]) > 0


def test_geminis_resource_exhausted_holds_the_next_call_for_the_retry_delay_in_its_body(
    fleet: Fleet, sim: SimHandle
) -> None:
    sim.configure(
        models={
            "gemini-wait": {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": 3, "organization": CANARY}
        }
    )
    submitted = fleet.submit_job({"model": "waiting", "messages": [{"role": "user", "content": "patience"}]})
    sim.wait_for_stats(
        lambda stats: stats["models"].get("gemini-wait", {}).get("injected_failures", {}).get("429", 0) >= 1,
        timeout_s=30,
    )
    sim.configure(models={"gemini-wait": {"fail_rate": 0}})
    job = fleet.wait_for_job(submitted["id"], timeout_s=60)

    assert_served(job, "gemini", "gemini-wait", "patience")
    calls = sim.calls("gemini-wait")
    first_429 = next(call["t"] for call in calls if call["status"] == 429)
    answered = next(call["t"] for call in calls if call["status"] == 200)
    # "retryDelay": "3s" was the only word on the wait (no Retry-After header), and it held:
    # without it the retry would have gone out after a backoff of tenths of a second.
    assert answered - first_429 >= 2.9
    first = attempts(fleet, job)[0]
    assert (first["provider"], first["outcome"]) == ("gemini", "rate_limited")
    assert first["error"].startswith("gemini answered 429 (rate limited), request id req_")
    assert CANARY not in json.dumps(job) + json.dumps(attempts(fleet, job))


# --- Fallback across kinds ------------------------------------------------------------------------


def test_a_job_falls_back_from_azure_to_openai_to_anthropic_as_each_in_turn_fails(
    fleet: Fleet, sim: SimHandle, config: dict[str, Any]
) -> None:
    no_wait = {"fail_rate": 1.0, "retry_after_s": None}

    healthy = run_job(fleet, "chain", "all well")
    sim.configure(models={"chain-4o-prod": {**no_wait, "fail_status": 500}})
    azure_down = run_job(fleet, "chain", "azure down")
    sim.configure(models={"chain-4o-mini": {**no_wait, "fail_status": 503}})
    both_down = run_job(fleet, "chain", "azure and openai down")

    assert_served(healthy, "azure", "chain-4o", "all well")
    assert_served(azure_down, "openai", "chain-4o-mini", "azure down")
    assert_served(both_down, "anthropic", "chain-haiku", "azure and openai down")
    outcomes = [
        [(a["provider"], a["outcome"]) for a in attempts(fleet, job)] for job in (azure_down, both_down)
    ]
    # Each failing target is tried twice (a retry with backoff) before the next one.
    assert outcomes == [
        [("azure", "server_error")] * 2 + [("openai", "succeeded")],
        [("azure", "server_error")] * 2 + [("openai", "overloaded")] * 2 + [("anthropic", "succeeded")],
    ]
    for job, model, upstream in (
        (healthy, "chain-4o", "chain-4o-prod"),
        (azure_down, "chain-4o-mini", "chain-4o-mini"),
        (both_down, "chain-haiku", "chain-haiku"),
    ):
        assert job["usage"] == counted_by_sim(sim, upstream)
        assert Decimal(job["cost_usd"]) == priced(config, model, job["usage"]) > 0


# --- OpenAI-compatible servers: the README's examples ---------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "key_env"),
    [
        ("deepseek", "deepseek-chat", "DEEPSEEK_API_KEY"),
        ("openrouter", "meta-llama/llama-3.3-70b-instruct", "OPENROUTER_API_KEY"),
        ("vllm", "Qwen/Qwen2.5-7B-Instruct", "VLLM_API_KEY"),
        ("ollama", "llama3.2", None),
    ],
)
def test_each_openai_compatible_example_in_the_readme_runs_a_job(
    provider: str,
    model: str,
    key_env: str | None,
    fleet: Fleet,
    sim: SimHandle,
    config: dict[str, Any],
    provider_keys: dict[str, str],
) -> None:
    job = run_job(fleet, model, f"hello {provider}")

    assert_served(job, provider, model, f"hello {provider}")
    [seen] = sim.requests(model)
    assert seen["path"] == "/v1/chat/completions"
    # Ollama needs no key: the SDK still sends a placeholder, as it must send one.
    key = provider_keys[key_env] if key_env else "jobgate-no-key"
    assert (seen["auth_headers"], seen["key"]) == (["authorization"], key)
    assert job["usage"] == counted_by_sim(sim, model)
    free = config["providers"][provider].get("free", False)
    assert Decimal(job["cost_usd"]) == (Decimal(0) if free else priced(config, model, job["usage"]))
