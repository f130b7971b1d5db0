"""The concurrency baseline: a plain script calling the simulated upstream from many threads.

No jobgate in between: `threads` threads share one `openai.OpenAI` client (as a jobgate
worker shares one per provider) and make `calls` chat completions between them, as fast as
the upstream answers. What the sim then reports (max in flight, calls/s) is what the same
machine and SDK reach with that many threads when nothing else is in the way.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai


def call_directly(base_url: str, model: str, *, calls: int, threads: int) -> int:
    """Make `calls` completions from `threads` threads; returns how many failed."""
    client = openai.OpenAI(
        base_url=base_url,
        api_key="bench",
        max_retries=0,
        timeout=30,
        http_client=openai.DefaultHttpxClient(limits=httpx2.Limits(max_connections=threads + 16), timeout=30),
    )
    counter = itertools.count()
    lock = threading.Lock()
    failures = 0

    def worker() -> None:
        nonlocal failures
        while True:
            with lock:
                index = next(counter)
            if index >= calls:
                return
            try:
                client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"direct prompt {index}"}],
                    max_tokens=16,
                )
            except openai.OpenAIError:
                with lock:
                    failures += 1

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="direct") as pool:
            for future in [pool.submit(worker) for _ in range(threads)]:
                future.result()
    finally:
        client.close()
    return failures
