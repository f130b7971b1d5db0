"""Parameters a target cannot honour, against real SQL, Redis and the sim: the request goes
to the model's next target instead of losing the parameter, and a job no target can honour
fails naming it. Alias `mixed` → an Anthropic-wire target, then an OpenAI-wire one; alias
`claude` → the Anthropic-wire target alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import sim_calls
from tests.sim_process import SimHandle


@pytest.fixture
def config_path(tmp_path: Path, sim: SimHandle, upstream_model: str) -> Iterator[Path]:
    config = {
        "providers": {
            "claude-sim": {"kind": "anthropic", "base_url": sim.url, "timeout_s": 10, "free": True},
            "gpt-sim": {"kind": "openai", "base_url": sim.openai_base_url, "timeout_s": 10, "free": True},
        },
        "models": {
            "mixed": {
                "targets": [
                    {"provider": "claude-sim", "model": f"{upstream_model}-claude"},
                    {"provider": "gpt-sim", "model": upstream_model},
                ]
            },
            "claude": {"targets": [{"provider": "claude-sim", "model": f"{upstream_model}-claude"}]},
            "gpt-first": {
                "targets": [
                    {"provider": "gpt-sim", "model": upstream_model},
                    {"provider": "claude-sim", "model": f"{upstream_model}-claude"},
                ]
            },
            "gpt": {"targets": [{"provider": "gpt-sim", "model": upstream_model}]},
        },
        "pricing": {
            f"{upstream_model}-claude": {"input_per_mtok": 1, "output_per_mtok": 1},
            upstream_model: {"input_per_mtok": 1, "output_per_mtok": 1},
        },
    }
    path = tmp_path / "jobgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    yield path


def body(model: str, **params: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "seeded"}], **params}


async def test_a_parameter_the_first_target_lacks_sends_the_request_to_the_next(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    response = await api_client.post("/v1/chat/completions", json=body("mixed", seed=7))

    assert response.status_code == 200, response.text
    assert sim_calls(sim, upstream_model) == 1
    assert sim_calls(sim, f"{upstream_model}-claude") == 0
    job = (await api_client.get(f"/v1/jobs/{response.headers['x-jobgate-job-id']}")).json()
    assert job["served_by"]["provider"] == "gpt-sim"


async def test_without_such_a_parameter_the_first_target_serves(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    response = await api_client.post("/v1/chat/completions", json=body("mixed", seed=None))

    assert response.status_code == 200, response.text
    assert sim_calls(sim, f"{upstream_model}-claude") == 1


async def test_a_job_no_target_can_honour_fails_naming_the_parameter(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    response = await api_client.post("/v1/chat/completions", json=body("claude", logit_bias={"7": 3}))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter" and "logit_bias" in error["message"]
    assert sim_calls(sim, f"{upstream_model}-claude") == 0


def thinking_message(model: str) -> dict[str, object]:
    return {
        "model": model,
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Context.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "think"}],
    }


async def test_thinking_in_anthropics_shape_skips_openai_targets_for_an_anthropic_one(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    response = await api_client.post("/anthropic/v1/messages", json=thinking_message("gpt-first"))

    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "echo: think"
    assert sim_calls(sim, f"{upstream_model}-claude") == 1 and sim_calls(sim, upstream_model) == 0


async def test_thinking_with_only_openai_targets_fails_naming_it(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    response = await api_client.post("/anthropic/v1/messages", json=thinking_message("gpt"))

    assert response.status_code == 400
    assert "thinking" in response.json()["error"]["message"]
    assert sim_calls(sim, upstream_model) == 0


async def test_an_anthropic_target_streams_token_by_token_as_openai_chunks(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    body = {"model": "claude", "messages": [{"role": "user", "content": "stream me"}], "stream": True}
    stream_options = {"stream_options": {"include_usage": True}}

    response = await api_client.post("/v1/chat/completions", json={**body, **stream_options})

    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert "".join(filter(None, contents)) == "echo: stream me"
    assert len([c for c in contents if c]) > 2  # one a token, as the sim streamed them
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert sim_calls(sim, f"{upstream_model}-claude") == 1
