"""`AsyncClient`: the asyncio client, a driver of the shared operations over `httpx.AsyncClient`.

The same methods as `Client` (see there), awaited; `iter_results` is an async iterator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from jobgate.client._core import (
    Call,
    Close,
    Done,
    Emit,
    Operation,
    Pause,
    ReadLine,
    Send,
    Step,
    Streamed,
    advance,
    build_request,
    client_options,
)
from jobgate.client._operations import BatchOptions, Operations, ResultOptions, WaitOptions
from jobgate.client._retry import RetryPolicy
from jobgate.client.types import Batch, Job, ResultLine

T = TypeVar("T")


class AsyncClient:
    """`AsyncClient("http://127.0.0.1:8000", "jg_...")`; `async with` it, or `await aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(**client_options(base_url, api_key, timeout_s), transport=transport)
        self._ops = Operations(retry or RetryPolicy())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit_job(self, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        return await self._run(self._ops.submit_job(body, idempotency_key))

    async def get_job(self, job_id: str, *, wait_s: float = 0) -> Job:
        return await self._run(self._ops.get_job(job_id, wait_s))

    async def wait_job(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        return await self._run(self._ops.wait_job(job_id, timeout_s))

    async def cancel_job(self, job_id: str) -> Job:
        return await self._run(self._ops.cancel_job(job_id))

    async def submit_batch(
        self, requests: Path | str | Iterable[Mapping[str, Any]], **options: Unpack[BatchOptions]
    ) -> Batch:
        return await self._run(self._ops.submit_batch(requests, **options))

    async def get_batch(self, batch_id: str) -> Batch:
        return await self._run(self._ops.get_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        return await self._run(self._ops.cancel_batch(batch_id))

    async def wait_batch(self, batch_id: str, **options: Unpack[WaitOptions]) -> Batch:
        return await self._run(self._ops.wait_batch(batch_id, **options))

    async def iter_results(
        self, batch_id: str, **options: Unpack[ResultOptions]
    ) -> AsyncIterator[ResultLine]:
        async with aclosing(self._drive(self._ops.iter_results(batch_id, **options))) as steps:
            async for item in steps:
                if isinstance(item, Done):
                    return
                yield item

    # The driver

    async def _run(self, op: Operation[T]) -> T:
        async with aclosing(self._drive(op)) as steps:
            async for item in steps:
                if isinstance(item, Done):
                    return item.value  # type: ignore[no-any-return]
        raise AssertionError("an operation ended without its result")

    async def _drive(self, op: Operation[Any]) -> AsyncGenerator[Any, None]:
        """Run `op`'s steps: yields what it emits, then `Done(its return value)`."""
        opened: list[httpx.Response] = []
        try:
            step = advance(op, None)
            while not isinstance(step, Done):
                if isinstance(step, Emit):
                    yield step.item
                    step = advance(op, None)
                else:
                    step = advance(op, await self._perform(step, opened))
            yield step
        finally:
            op.close()
            for response in opened:
                await response.aclose()

    async def _perform(self, step: Step, opened: list[httpx.Response]) -> Any:
        if isinstance(step, Send):
            return await self._send(step.call, opened)
        if isinstance(step, ReadLine):
            return await _next_line(step.lines)
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Close):
            await step.response.aclose()
            opened.remove(step.response)
        return None

    async def _send(self, call: Call, opened: list[httpx.Response]) -> Any:
        request = build_request(self._http, call, call.upload.achunks() if call.upload else None)
        try:
            response = await self._http.send(request, stream=call.stream)
            if not call.stream:
                return response
            if response.is_error:
                try:
                    await response.aread()  # the error's body, for its type and message
                finally:
                    await response.aclose()
                return response
            opened.append(response)
            return Streamed(response, response.aiter_lines())
        except httpx.TransportError as exc:
            return exc


async def _next_line(lines: AsyncIterator[str]) -> str | httpx.TransportError | None:
    try:
        return await anext(lines, None)
    except httpx.TransportError as exc:
        return exc
