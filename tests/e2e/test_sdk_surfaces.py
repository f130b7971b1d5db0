"""The compatibility surfaces end to end, with real processes: the official `openai` and
`anthropic` SDKs → the API process → a worker process → the simulated upstream.

- OpenAI: `files.create` → `batches.create` → poll → `files.content` read line by line, for
  1,000 requests of which the sim fails a share upstream (non-retryable 400s);
- Anthropic: `messages.batches.create` → poll → `results()`, and `messages.create`;
- the API process's own calls for the sync path, and the SDK's own retry after a sync timeout
  attaching to the job still running (one job, one upstream call).
"""

from __future__ import annotations

import io
import json
from typing import Any

import anthropic
import openai
import psycopg
import pytest

from tests.fleet import Fleet, run_fleet, sim_provider
from tests.processes import wait_until
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

REQUESTS = 1_000


def config(sim: SimHandle) -> dict[str, Any]:
    return {
        "providers": {"sim": sim_provider(sim)},
        "models": {
            "fast": {"targets": [{"provider": "sim", "model": "surface-echo"}]},
            "slow": {"targets": [{"provider": "sim", "model": "surface-slow"}]},
        },
        "cache": {"default": False, "ttl_s": 60},
    }


def batch_lines(count: int) -> bytes:
    lines = (
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "fast", "messages": [{"role": "user", "content": f"surface {i}"}]},
            }
        )
        for i in range(count)
    )
    return ("\n".join(lines) + "\n").encode()


def jobs_of(fleet: Fleet, model: str) -> int:
    with psycopg.connect(fleet.database_url) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs WHERE model = %s", (model,)).fetchone()[0])  # type: ignore[index]


def test_the_official_sdks_drive_every_surface_through_real_processes() -> None:
    with run_sim() as sim:
        sim.configure(seed=11, models={"surface-echo": {"fail_rate": 0.05, "fail_status": 400}})
        with run_fleet(
            sim=sim, config=config(sim), workers=1, threads=8, settings={"sync_timeout_s": "1"}
        ) as fleet:
            gpt = openai.OpenAI(
                base_url=f"{fleet.api_url}/openai/v1", api_key=fleet.api_key, max_retries=3, timeout=60
            )
            claude = anthropic.Anthropic(
                base_url=f"{fleet.api_url}/anthropic", api_key=fleet.api_key, timeout=60
            )

            upload = gpt.files.create(file=("in.jsonl", io.BytesIO(batch_lines(REQUESTS))), purpose="batch")
            batch = gpt.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            message_batch = claude.messages.batches.create(
                requests=[
                    {
                        "custom_id": f"m{i}",
                        "params": {
                            "model": "fast",
                            "max_tokens": 32,
                            "messages": [{"role": "user", "content": f"m {i}"}],
                        },
                    }
                    for i in range(20)
                ]
            )

            done = wait_until_finished(lambda: gpt.batches.retrieve(batch.id), ("completed", "failed"))
            assert done.output_file_id is not None and done.error_file_id is not None
            output = [json.loads(line) for line in gpt.files.content(done.output_file_id).text.splitlines()]
            errors = [json.loads(line) for line in gpt.files.content(done.error_file_id).text.splitlines()]
            ended = wait_until_finished(
                lambda: claude.messages.batches.retrieve(message_batch.id), ("ended",)
            )
            results = {
                line.custom_id: line.result.type for line in claude.messages.batches.results(message_batch.id)
            }

            sim.configure(models={"surface-echo": {"fail_rate": 0.0}, "surface-slow": {"latency_ms": 2500}})
            message = claude.messages.create(
                model="fast", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
            )
            slow = gpt.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "patience"}]
            )
            slow_jobs = jobs_of(fleet, "slow")
        slow_calls = sim.stats()["models"]["surface-slow"]["calls"]

    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(output), len(errors))
    assert 0 < len(errors) < 150 and len(output) + len(errors) == REQUESTS
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(REQUESTS))
    assert all(
        line["response"]["body"]["choices"][0]["message"]["content"].startswith("echo: surface")
        for line in output
    )
    assert ended.processing_status == "ended" and len(results) == 20
    assert set(results.values()) <= {"succeeded", "errored"}
    assert message.content[0].text == "echo: hi"  # type: ignore[union-attr]
    assert slow.choices[0].message.content == "echo: patience"
    assert (slow_jobs, slow_calls) == (1, 1)  # the SDK's retries after 504s waited on the one job


def wait_until_finished(read: Any, final: tuple[str, ...], timeout_s: float = 120) -> Any:
    seen: list[Any] = []

    def finished() -> bool:
        seen[:] = [read()]
        status = getattr(seen[0], "status", None) or getattr(seen[0], "processing_status", None)
        return status in final

    wait_until(finished, timeout_s=timeout_s, interval_s=0.5, what=f"a batch to reach {final}")
    return seen[0]
