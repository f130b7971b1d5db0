"""What each client method does, once for both clients: the requests it makes, in order,
the waits between them, and what it returns (see `_core` for the steps a driver runs)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote

import httpx

from jobgate.client._core import Call, Close, Emit, Operation, Pause, ReadLine, Streamed, exchange, fetch
from jobgate.client._retry import RetryPolicy
from jobgate.client._upload import NdjsonUpload
from jobgate.client.errors import APIConnectionError, WaitTimeout
from jobgate.client.progress import BatchProgress, ProgressMeter
from jobgate.client.types import FINAL_JOB_STATUSES, Batch, Job, batch_is_final

# The API's longest long-poll (GET /v1/jobs/{id}?wait=N), and what a read may take beyond it.
MAX_WAIT_S = 60.0
WAIT_MARGIN_S = 30.0

ProgressCallback = Callable[[BatchProgress], object]


class BatchOptions(TypedDict, total=False):
    """`submit_batch`'s options: `model` fills `body.model` where a request names none;
    `priority`, `webhook_url` and `metadata` are the batch's; `idempotency_key` is made when
    not given, once per submission."""

    model: str | None
    priority: str | None
    webhook_url: str | None
    metadata: Mapping[str, str] | None
    idempotency_key: str | None


class WaitOptions(TypedDict, total=False):
    """`wait_batch`'s options: `on_progress(BatchProgress)` after each read, every
    `poll_interval_s` (1 s); `WaitTimeout` after `timeout_s` (None, the default: no limit)."""

    on_progress: ProgressCallback | None
    poll_interval_s: float
    timeout_s: float | None


class ResultOptions(TypedDict, total=False):
    """`iter_results`'s options: `follow` (default True) goes on until every job is final,
    reading every `poll_interval_s`; lines of the jobs in `skip_job_ids` are not emitted."""

    follow: bool
    poll_interval_s: float
    skip_job_ids: Iterable[str]


def new_idempotency_key() -> str:
    return f"jgc_{uuid.uuid4().hex}"


def _id(value: str) -> str:
    return quote(value, safe="")


class Operations:
    """The operations, bound to one retry policy, source of Idempotency-Keys and clock."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        new_key: Callable[[], str] = new_idempotency_key,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.new_key = new_key
        self.monotonic = monotonic

    # Jobs

    def submit_job(self, body: Mapping[str, Any], idempotency_key: str | None) -> Operation[Job]:
        # The key is made here, once per submission, and every retry of it sends the same.
        key = idempotency_key or self.new_key()
        return fetch(Call("POST", "/v1/jobs", json=dict(body), idempotency_key=key), self.policy)

    def get_job(self, job_id: str, wait_s: float = 0) -> Operation[Job]:
        wait_s = min(max(wait_s, 0.0), MAX_WAIT_S)
        params = {"wait": f"{wait_s:g}"} if wait_s else None
        call = Call("GET", f"/v1/jobs/{_id(job_id)}", params=params, timeout_s=wait_s + WAIT_MARGIN_S)
        return fetch(call, self.policy)

    def wait_job(self, job_id: str, timeout_s: float | None) -> Operation[Job]:
        """Long-poll the job until it is final; WaitTimeout after `timeout_s` (None: no limit)."""
        deadline = None if timeout_s is None else self.monotonic() + timeout_s
        while True:
            remaining = MAX_WAIT_S if deadline is None else deadline - self.monotonic()
            job: Job = yield from self.get_job(job_id, wait_s=max(min(remaining, MAX_WAIT_S), 0.0))
            if job["status"] in FINAL_JOB_STATUSES:
                return job
            if deadline is not None and self.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job['status']} after {timeout_s:g} s")

    def cancel_job(self, job_id: str) -> Operation[Job]:
        return fetch(Call("POST", f"/v1/jobs/{_id(job_id)}/cancel"), self.policy)

    # Batches

    def submit_batch(
        self,
        requests: Path | str | Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        priority: str | None = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Operation[Batch]:
        """`POST /v1/batches` as NDJSON, streamed; the batch-level options as query parameters."""
        source = Path(requests) if isinstance(requests, str | Path) else requests
        params = {
            name: value
            for name, value in (
                ("priority", priority),
                ("webhook_url", webhook_url),
                ("metadata", None if metadata is None else json.dumps(dict(metadata))),
            )
            if value is not None
        }
        call = Call(
            "POST",
            "/v1/batches",
            params=params or None,
            upload=NdjsonUpload(source, model=model),
            idempotency_key=idempotency_key or self.new_key(),
        )
        return fetch(call, self.policy)

    def get_batch(self, batch_id: str) -> Operation[Batch]:
        return fetch(Call("GET", f"/v1/batches/{_id(batch_id)}"), self.policy)

    def cancel_batch(self, batch_id: str) -> Operation[Batch]:
        return fetch(Call("POST", f"/v1/batches/{_id(batch_id)}/cancel"), self.policy)

    def wait_batch(
        self,
        batch_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        poll_interval_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> Operation[Batch]:
        """Read the batch every `poll_interval_s` until every job is final, telling
        `on_progress` after each read; WaitTimeout after `timeout_s` (None: no limit)."""
        meter = ProgressMeter()
        started = self.monotonic()
        while True:
            batch: Batch = yield from self.get_batch(batch_id)
            if on_progress is not None:
                on_progress(meter.update(batch, self.monotonic()))
            if batch_is_final(batch):
                return batch
            waited = self.monotonic() - started
            if timeout_s is not None and waited >= timeout_s:
                counts = batch["counts"]
                raise WaitTimeout(
                    f"batch {batch_id} has {counts['queued'] + counts['running']} of"
                    f" {counts['total']} jobs unfinished after {timeout_s:g} s"
                )
            pause = poll_interval_s if timeout_s is None else min(poll_interval_s, timeout_s - waited)
            yield Pause(pause)

    def iter_results(
        self,
        batch_id: str,
        *,
        follow: bool = True,
        poll_interval_s: float = 1.0,
        skip_job_ids: Iterable[str] = (),
    ) -> Operation[None]:
        """Emit each result line once: what is final now, and with `follow`, the rest as it
        finishes, until every job is final. A line whose `job_id` is in `skip_job_ids` (or was
        emitted already) is passed over, so a cut stream is simply read again."""
        seen = set(skip_job_ids)
        cuts = 0
        read_when_done = -1  # the batch's done count at the last complete read
        while True:
            last_read, done = True, -1
            if follow:
                batch: Batch = yield from self.get_batch(batch_id)
                last_read = batch_is_final(batch)
                counts = batch["counts"]
                done = counts["total"] - counts["queued"] - counts["running"]
                if done == read_when_done and not last_read:
                    yield Pause(poll_interval_s)
                    continue  # nothing new has finished: no need to read the lines again
            call = Call("GET", f"/v1/batches/{_id(batch_id)}/results", stream=True)
            streamed: Streamed = yield from exchange(call, self.policy)
            emitted, cut = yield from _emit_new_lines(streamed, seen)
            if emitted:
                cuts = 0
            if cut:
                error = APIConnectionError(f"the results of batch {batch_id} were cut off")
                delay = self.policy.delay_s(cuts, error)
                if delay is None:
                    raise error
                cuts += 1
                yield Pause(delay)
                continue
            if last_read:
                return None
            read_when_done = done
            yield Pause(poll_interval_s)


def _emit_new_lines(streamed: Streamed, seen: set[str]) -> Operation[tuple[int, bool]]:
    """Emit the stream's lines whose job is not in `seen` (adding it); how many were emitted,
    and whether the stream was cut before its end (a transport error, a partial line)."""
    emitted = 0
    while True:
        line = yield ReadLine(streamed.lines)
        if line is None:
            break
        if isinstance(line, str) and not line.strip():
            continue
        item = None if isinstance(line, httpx.TransportError) else _result_line(line)
        if item is None:
            yield Close(streamed.response)
            return emitted, True
        if item["job_id"] not in seen:
            seen.add(item["job_id"])
            emitted += 1
            yield Emit(item)
    yield Close(streamed.response)
    return emitted, False


def _result_line(line: str) -> dict[str, Any] | None:
    """A results line as an object, or None when it is not one whole line of JSON."""
    try:
        item = json.loads(line)
    except ValueError:
        return None
    return item if isinstance(item, dict) and "job_id" in item else None
