"""The baselines with no jobgate in between: the same SDK calling the simulated upstream.

`call_directly(base_url, model, calls=, concurrency=)` makes `calls` chat completions with at
most `concurrency` in flight, from one `openai.AsyncOpenAI` client on one event loop, as a
jobgate worker makes its calls (one async client per provider, one pool). What the sim then
reports (calls in flight, calls/s) is what this machine and SDK reach when nothing else is
in the way. `async_client` is that client, for the benchmarks that drive load themselves.
"""

from __future__ import annotations

import asyncio
import itertools

import httpx2
import openai


def async_client(base_url: str, concurrency: int, *, api_key: str = "bench") -> openai.AsyncOpenAI:
    """An async SDK client whose pool holds `concurrency` connections (and a few more), on the
    SDK's aiohttp transport as jobgate's adapters use it."""
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=60,
        http_client=openai.DefaultAioHttpClient(
            limits=httpx2.Limits(
                max_connections=concurrency + 16, max_keepalive_connections=concurrency + 16
            ),
            timeout=60,
        ),
    )


async def _call_directly(base_url: str, model: str, calls: int, concurrency: int) -> int:
    client = async_client(base_url, concurrency)
    counter = itertools.count()
    failures = 0

    async def caller() -> None:
        nonlocal failures
        while (index := next(counter)) < calls:
            try:
                await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"direct prompt {index}"}],
                    max_tokens=16,
                )
            except openai.OpenAIError:
                failures += 1

    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        await client.close()
    return failures


def call_directly(base_url: str, model: str, *, calls: int, concurrency: int) -> int:
    """Make `calls` completions, at most `concurrency` at once; returns how many failed."""
    return asyncio.run(_call_directly(base_url, model, calls, concurrency))
