"""Submitting a batch to a running API and timing it, as a batch submitter would see it.

`submit_and_wait` posts one NDJSON batch of distinct prompts (the cache is off in the bench
config, and distinct prompts keep single-flight out of the picture too), then watches it:
the first succeeded job (a cheap `GET /v1/jobs?status=succeeded&limit=1`, polled often until
it answers) and the batch's completion (`GET /v1/batches/{id}`, polled less often). Times
are from the moment the POST starts, on this process's monotonic clock.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench import progress
from bench.fleet import ALIAS

FIRST_RESULT_POLL_S = 0.02
BATCH_POLL_S = 0.1


def ndjson_batch(count: int, *, tag: str, max_tokens: int = 16) -> bytes:
    """`count` NDJSON lines, each a distinct short prompt."""
    lines = (
        json.dumps(
            {
                "custom_id": f"{tag}-{i}",
                "body": {
                    "model": ALIAS,
                    "messages": [{"role": "user", "content": f"bench {tag} prompt {i}"}],
                    "max_tokens": max_tokens,
                },
            },
            separators=(",", ":"),
        )
        for i in range(count)
    )
    return ("\n".join(lines) + "\n").encode()


def api_client(api_url: str, key: str, *, timeout_s: float = 600.0) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)


@dataclass
class BatchTiming:
    batch_id: str
    total: int
    post_s: float
    first_result_s: float | None
    completed_s: float | None
    counts: dict[str, int]


class FirstResultWatch:
    """Polls the tenant's succeeded jobs from a thread; records when the first one appears.

    The fleet's tenant is fresh, so any succeeded job belongs to the batch being timed; that
    lets the watch run while the POST is still uploading (workers may finish jobs before the
    API has answered).
    """

    def __init__(self, client: httpx.Client, started: float) -> None:
        # Its own connection: the main client is busy with the upload meanwhile.
        self.client = httpx.Client(base_url=client.base_url, headers=client.headers, timeout=30)
        self.started = started
        self.first_result_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="first-result", daemon=True)

    def __enter__(self) -> FirstResultWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()

    def wait(self, timeout_s: float) -> float | None:
        self._thread.join(timeout=timeout_s)
        return self.first_result_s

    def _poll(self) -> None:
        while not self._stop.is_set():
            response = self.client.get("/v1/jobs", params={"status": "succeeded", "limit": 1})
            if response.status_code == 200 and response.json()["data"]:
                self.first_result_s = time.monotonic() - self.started
                return
            self._stop.wait(FIRST_RESULT_POLL_S)


def post_ndjson(client: httpx.Client, body: bytes) -> dict[str, Any]:
    response = client.post("/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"})
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/batches answered {response.status_code}: {response.text[:500]}")
    batch: dict[str, Any] = response.json()
    return batch


def submit_and_wait(client: httpx.Client, body: bytes, total: int, *, timeout_s: float) -> BatchTiming:
    """POST the batch, then poll until it is completed (or `timeout_s` passes)."""
    progress.step(f"submitting {total:,} jobs")
    started = time.monotonic()
    with FirstResultWatch(client, started) as watch:
        batch = post_ndjson(client, body)
        post_s = time.monotonic() - started
        progress.step(f"accepted in {post_s:.2f} s; waiting for completion")
        completed_s = None
        counts: dict[str, int] = batch["counts"]
        while time.monotonic() - started < timeout_s:
            view = client.get(f"/v1/batches/{batch['id']}").json()
            counts = view["counts"]
            finished = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            progress.bar(finished, total)
            if view["status"] == "completed":
                completed_s = time.monotonic() - started
                break
            time.sleep(BATCH_POLL_S)
        first_result_s = watch.wait(timeout_s=5)
    return BatchTiming(batch["id"], total, post_s, first_result_s, completed_s, counts)
