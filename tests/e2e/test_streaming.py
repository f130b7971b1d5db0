"""Streaming through real processes (uvicorn serving the API, a worker, the sim): tokens
reach the openai SDK as the upstream produces them, the anthropic SDK reads its own event
sequence, and a client that hangs up mid-stream ends the
upstream call and leaves its job failed `client_disconnected`."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import openai
import psycopg
import pytest

from tests.fleet import Fleet, run_fleet, sim_provider
from tests.processes import wait_until
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

DELAY_MS = 100


def config(sim: SimHandle) -> dict[str, Any]:
    return {
        "providers": {"sim": sim_provider(sim)},
        "models": {"fast": {"targets": [{"provider": "sim", "model": "streamed"}]}},
        "cache": {"default": False, "ttl_s": 60},
    }


def job_state(fleet: Fleet) -> tuple[str, Any]:
    with psycopg.connect(fleet.database_url) as conn:
        row = conn.execute("SELECT status, error FROM jobs").fetchone()
    assert row is not None
    return row[0], row[1]


def test_tokens_arrive_as_made_and_a_client_that_hangs_up_ends_the_call() -> None:
    with run_sim() as sim:
        sim.configure(models={"streamed": {"stream_delay_ms": DELAY_MS}})
        with run_fleet(sim=sim, config=config(sim), workers=1, threads=4) as fleet:
            client = openai.OpenAI(
                base_url=f"{fleet.api_url}/v1", api_key=fleet.api_key, max_retries=0, timeout=60
            )
            started = time.monotonic()
            arrivals, parts = [], []
            for chunk in client.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "twelve tokens or so of answer"}],
                stream=True,
            ):
                arrivals.append(time.monotonic() - started)
                parts += [choice.delta.content or "" for choice in chunk.choices]
            whole = client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "twelve tokens or so of answer"}]
            )
            claude = anthropic.Anthropic(
                base_url=f"{fleet.api_url}/anthropic", api_key=fleet.api_key, timeout=60
            )
            with claude.messages.stream(
                model="fast", max_tokens=64, messages=[{"role": "user", "content": "as Anthropic streams"}]
            ) as stream:
                anthropic_text = "".join(stream.text_stream)

            with psycopg.connect(fleet.database_url) as conn:
                conn.execute("DELETE FROM job_attempts")
                conn.execute("DELETE FROM jobs")
            body = {"model": "fast", "messages": [{"role": "user", "content": "long " * 100}], "stream": True}
            headers = {"Authorization": f"Bearer {fleet.api_key}"}
            with httpx.stream(
                "POST", f"{fleet.api_url}/v1/chat/completions", json=body, headers=headers, timeout=30
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        break  # the first chunk came: hang up
            wait_until(
                lambda: job_state(fleet)[0] in ("succeeded", "failed"), timeout_s=20, what="the job to end"
            )
            status, error = job_state(fleet)
            wait_until(lambda: sim.stats()["in_flight"] == 0, timeout_s=10, what="the upstream call to end")

    assert "".join(parts) == whole.choices[0].message.content == "echo: twelve tokens or so of answer"
    assert anthropic_text == "echo: as Anthropic streams"
    # One event every DELAY_MS from the sim: the first chunks arrive long before the last one.
    assert arrivals[1] < arrivals[-1] - 0.5
    assert status == "failed" and error["type"] == "client_disconnected"
