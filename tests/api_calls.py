"""Requests the integration tests make through the in-process API client, in one place."""

from __future__ import annotations

from typing import Any

import httpx


def job_body(prompt: str = "Hello", **extra: Any) -> dict[str, Any]:
    """A chat-completion job body on the tests' alias `fast`."""
    return {"model": "fast", "messages": [{"role": "user", "content": prompt}], **extra}


async def submit(client: httpx.AsyncClient, prompt: str = "Hello", **extra: Any) -> dict[str, Any]:
    """POST /v1/jobs; the 202 answer's job object."""
    response = await client.post("/v1/jobs", json=job_body(prompt, **extra))
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job
