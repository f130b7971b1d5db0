"""The client against a scripted local HTTP server: what it does when the API says no.

A 429 with `Retry-After` is waited out and the submit sent again with the same
Idempotency-Key (and, for a batch file, the same bytes), so the API can answer the repeat
with the first submission; a refusal (404, 409) is raised at once, typed; a results stream
refused, or cut mid-line or mid-body, is read again, each line emitted once. Each case runs on `Client`
and `AsyncClient`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobgate.client import AsyncClient, Client, ConflictError, NotFoundError, RetryPolicy


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Declare this Content-Length and close after `body` (a body cut short).
    declared_length: int | None = None

    @classmethod
    def json(cls, status: int, value: Any, **headers: str) -> Reply:
        return cls(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class ScriptedApi:
    """Answers each `METHOD /path` with its scripted replies in turn (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.received: list[Received] = []
        self.lock = threading.Lock()

    def on(self, route: str, *replies: Reply) -> None:
        self.script[route] = list(replies)

    def reply_for(self, route: str) -> Reply:
        with self.lock:
            replies = self.script.get(route) or [Reply.json(404, {"error": {"type": "not_found_error"}})]
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def requests(self, route: str) -> list[Received]:
        return [r for r in self.received if f"{r.method} {r.path.split('?')[0]}" == route]


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = b""
        while size := int(handler.rfile.readline().strip() or b"0", 16):
            body += handler.rfile.read(size)
            handler.rfile.readline()
        handler.rfile.readline()
        return body
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


@pytest.fixture
def api() -> Iterator[tuple[ScriptedApi, str]]:
    scripted = ScriptedApi()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            body = _read_body(self)
            scripted.received.append(
                Received(self.command, self.path, dict(self.headers), body, time.monotonic())
            )
            reply = scripted.reply_for(f"{self.command} {self.path.split('?')[0]}")
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(reply.declared_length or len(reply.body)))
            if reply.declared_length is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `scripted.received` instead

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield scripted, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def call(kind: str, base_url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """`Client(...).method(*args, **kwargs)`, or the same on an `AsyncClient`; iterators as lists."""
    policy = RetryPolicy(base_delay_s=0.01)
    if kind == "sync":
        with Client(base_url, "jg_test", retry=policy) as client:
            answer = getattr(client, method)(*args, **kwargs)
            return list(answer) if method == "iter_results" else answer

    async def run() -> Any:
        async with AsyncClient(base_url, "jg_test", retry=policy) as client:
            if method == "iter_results":
                return [line async for line in client.iter_results(*args, **kwargs)]
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(run())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])
LIMITED = {"error": {"type": "rate_limited", "message": "slow down", "param": None}}


@KINDS
def test_a_429_is_waited_out_for_its_retry_after_and_resent_with_the_same_idempotency_key(
    api: tuple[ScriptedApi, str], kind: str
) -> None:
    scripted, url = api
    job = {"id": "job_1", "object": "job", "status": "queued"}
    scripted.on("POST /v1/jobs", Reply.json(429, LIMITED, **{"Retry-After": "1"}), Reply.json(202, job))

    answer = call(kind, url, "submit_job", {"model": "fast", "messages": [{"role": "user", "content": "hi"}]})

    assert answer == job
    first, second = scripted.requests("POST /v1/jobs")
    assert (
        first.headers["Idempotency-Key"]
        and first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    )
    assert first.headers["Authorization"] == "Bearer jg_test"
    assert first.body == second.body
    assert second.at - first.at >= 0.95


@KINDS
def test_a_batch_file_retried_after_a_503_is_streamed_again_byte_for_byte_under_the_same_key(
    api: tuple[ScriptedApi, str], kind: str, tmp_path: Path
) -> None:
    scripted, url = api
    path = tmp_path / "batch.jsonl"
    path.write_text(
        "".join(
            json.dumps({"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": "x" * 500}]}})
            + "\n"
            for i in range(2000)
        )
    )
    batch = {"id": "batch_1", "object": "batch", "counts": {"total": 2000}}
    down = {"error": {"type": "service_unavailable", "message": "later", "param": None}}
    scripted.on("POST /v1/batches", Reply.json(503, down, **{"Retry-After": "0"}), Reply.json(201, batch))

    assert call(kind, url, "submit_batch", path, model="fast", metadata={"team": "a"}) == batch

    first, second = scripted.requests("POST /v1/batches")
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers["Content-Type"] == "application/x-ndjson"
    assert first.body == second.body and first.body.count(b"\n") == 2000
    assert json.loads(first.body.split(b"\n")[0])["body"]["model"] == "fast"
    assert "metadata=%7B%22team%22%3A+%22a%22%7D" in first.path


@KINDS
def test_refusals_are_raised_at_once_as_typed_errors(api: tuple[ScriptedApi, str], kind: str) -> None:
    scripted, url = api
    conflict = {"error": {"type": "conflict", "message": "key reused", "param": "Idempotency-Key"}}
    scripted.on("POST /v1/jobs", Reply.json(409, conflict))
    with pytest.raises(ConflictError) as raised:
        call(kind, url, "submit_job", {"model": "fast"}, idempotency_key="k1")
    assert raised.value.param == "Idempotency-Key" and raised.value.message == "key reused"
    assert len(scripted.requests("POST /v1/jobs")) == 1
    with pytest.raises(NotFoundError):
        call(kind, url, "get_batch", "batch_nope")


def _lines(n: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": f"c{i}", "job_id": f"job_{i}", "status": "succeeded", "result": None, "error": None}
        for i in range(n)
    ]


@KINDS
def test_a_results_stream_cut_off_is_read_again_and_each_line_comes_once(
    api: tuple[ScriptedApi, str], kind: str
) -> None:
    scripted, url = api
    lines = _lines(6)
    whole = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    cut_mid_line = whole[: whole.index(b"job_3") + 2]
    ndjson = {"Content-Type": "application/x-ndjson"}
    scripted.on(
        "GET /v1/batches/batch_1/results",
        # Refused for a moment, then the connection drops mid-body (fewer bytes than declared),
        # then mid-line.
        Reply.json(
            503, {"error": {"type": "service_unavailable", "message": "later"}}, **{"Retry-After": "0"}
        ),
        Reply(200, whole[: whole.index(b"job_2")], ndjson, declared_length=len(whole)),
        Reply(200, cut_mid_line, ndjson),
        Reply(200, whole, ndjson),
    )

    got = call(kind, url, "iter_results", "batch_1", follow=False)

    assert got == lines
    assert len(scripted.requests("GET /v1/batches/batch_1/results")) == 4


@KINDS
def test_waiting_for_a_batch_reports_progress_after_each_read(
    api: tuple[ScriptedApi, str], kind: str
) -> None:
    scripted, url = api

    def batch(done: int) -> Reply:
        counts = {
            "total": 4,
            "queued": 4 - done,
            "running": 0,
            "succeeded": done,
            "failed": 0,
            "cancelled": 0,
        }
        return Reply.json(
            200, {"id": "batch_1", "status": "completed" if done == 4 else "in_progress", "counts": counts}
        )

    scripted.on("GET /v1/batches/batch_1", batch(0), batch(1), batch(3), batch(4))
    seen: list[tuple[int, int]] = []

    final = call(
        kind,
        url,
        "wait_batch",
        "batch_1",
        poll_interval_s=0.01,
        on_progress=lambda p: seen.append((p.done, p.total)),
    )

    assert final["status"] == "completed"
    assert seen == [(0, 4), (1, 4), (3, 4), (4, 4)]
