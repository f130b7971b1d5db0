"""`Client`: the synchronous client, a driver of the shared operations over `httpx.Client`."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
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


class Client:
    """A client of one jobgate API with one key.

    `Client("http://127.0.0.1:8000", "jg_...")`; use it as a context manager, or `close()`
    it. Every method retries what may be retried (`retry`, a `RetryPolicy`) and raises a
    `jobgate.client.errors.JobgateError` subclass otherwise.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(**client_options(base_url, api_key, timeout_s), transport=transport)
        self._ops = Operations(retry or RetryPolicy())

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Jobs

    def submit_job(self, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """`POST /v1/jobs`: the job, queued (or the one an earlier submit with this key made)."""
        return self._run(self._ops.submit_job(body, idempotency_key))

    def get_job(self, job_id: str, *, wait_s: float = 0) -> Job:
        """The job; with `wait_s` (at most 60), as soon as it is final or `wait_s` passed."""
        return self._run(self._ops.get_job(job_id, wait_s))

    def wait_job(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        """The job once it is final; `WaitTimeout` after `timeout_s` (None: no limit)."""
        return self._run(self._ops.wait_job(job_id, timeout_s))

    def cancel_job(self, job_id: str) -> Job:
        return self._run(self._ops.cancel_job(job_id))

    # Batches

    def submit_batch(
        self, requests: Path | str | Iterable[Mapping[str, Any]], **options: Unpack[BatchOptions]
    ) -> Batch:
        """`POST /v1/batches`. `requests`: `{"custom_id", "body"}` objects, or the path of a
        JSONL file of them (or of OpenAI batch lines), streamed from disk; `BatchOptions`."""
        return self._run(self._ops.submit_batch(requests, **options))

    def get_batch(self, batch_id: str) -> Batch:
        return self._run(self._ops.get_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel the batch's queued jobs (running ones finish); the batch."""
        return self._run(self._ops.cancel_batch(batch_id))

    def wait_batch(self, batch_id: str, **options: Unpack[WaitOptions]) -> Batch:
        """The batch once every job is final (`WaitOptions`: a progress callback, a timeout)."""
        return self._run(self._ops.wait_batch(batch_id, **options))

    def iter_results(self, batch_id: str, **options: Unpack[ResultOptions]) -> Iterator[ResultLine]:
        """Each job's result line once, as jobs finish (in submission order among those final
        at each read) until the batch is done; `follow=False`: only those final now."""
        with closing(self._drive(self._ops.iter_results(batch_id, **options))) as steps:
            for item in steps:
                if isinstance(item, Done):
                    return
                yield item

    # The driver

    def _run(self, op: Operation[T]) -> T:
        with closing(self._drive(op)) as steps:
            for item in steps:
                if isinstance(item, Done):
                    return item.value  # type: ignore[no-any-return]
        raise AssertionError("an operation ended without its result")

    def _drive(self, op: Operation[Any]) -> Generator[Any, None, None]:
        """Run `op`'s steps: yields what it emits, then `Done(its return value)`."""
        opened: list[httpx.Response] = []
        try:
            step = advance(op, None)
            while not isinstance(step, Done):
                if isinstance(step, Emit):
                    yield step.item
                    step = advance(op, None)
                else:
                    step = advance(op, self._perform(step, opened))
            yield step
        finally:
            op.close()
            for response in opened:
                response.close()

    def _perform(self, step: Step, opened: list[httpx.Response]) -> Any:
        if isinstance(step, Send):
            return self._send(step.call, opened)
        if isinstance(step, ReadLine):
            return _next_line(step.lines)
        if isinstance(step, Pause):
            time.sleep(step.seconds)
        elif isinstance(step, Close):
            step.response.close()
            opened.remove(step.response)
        return None

    def _send(self, call: Call, opened: list[httpx.Response]) -> Any:
        request = build_request(self._http, call, call.upload.chunks() if call.upload else None)
        try:
            response = self._http.send(request, stream=call.stream)
            if not call.stream:
                return response
            if response.is_error:
                try:
                    response.read()  # the error's body, for its type and message
                finally:
                    response.close()
                return response
            opened.append(response)
            return Streamed(response, response.iter_lines())
        except httpx.TransportError as exc:
            return exc


def _next_line(lines: Iterator[str]) -> str | httpx.TransportError | None:
    try:
        return next(lines, None)
    except httpx.TransportError as exc:
        return exc
