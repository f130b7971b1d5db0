"""Request body deadlines (`api/body_timeout.py`), driven by a fake clock: a trickle slower than
the minimum rate is cut off once its allowance is spent, a steady upload goes through however
long it takes, time the handler itself spends is not the client's, and a body that stops is
cut off after the read timeout (real time, kept short)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from api.body_timeout import BodyTimeoutMiddleware

TIMEOUT_S = 30.0
RATE = 500


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def read_whole_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the body (as a route does), then answers how much it got."""
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    payload = json.dumps({"received": received}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": payload})


def client_sending(chunks: list[tuple[bytes, float]], clock: FakeClock, *, then_stall: bool) -> Receive:
    """Each chunk arrives after its (fake) delay; the last ends the body, unless `then_stall`:
    then the client sends nothing more."""
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            await asyncio.Event().wait()
        body, delay_s = pending.pop(0)
        clock.now += delay_s
        return {"type": "http.request", "body": body, "more_body": then_stall or bool(pending)}

    return receive


async def serve(
    chunks: list[tuple[bytes, float]],
    *,
    clock: FakeClock | None = None,
    app: Callable[[Scope, Receive, Send], Any] = read_whole_body,
    read_timeout_s: float = TIMEOUT_S,
    then_stall: bool = False,
) -> tuple[int, dict[str, bytes], dict[str, Any]]:
    clock = clock or FakeClock()
    middleware = BodyTimeoutMiddleware(
        app, read_timeout_s=read_timeout_s, min_rate_bytes_s=RATE, monotonic=clock
    )
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/batches", "headers": []}
    await asyncio.wait_for(
        middleware(scope, client_sending(chunks, clock, then_stall=then_stall), send), timeout=10
    )
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    headers = {k.decode(): v for k, v in start["headers"]}
    return start["status"], headers, json.loads(body)


async def test_a_trickle_is_cut_off_with_408_once_its_allowance_is_spent() -> None:
    clock = FakeClock()
    one_byte_a_second = [(b"x", 1.0)] * 100

    status, headers, body = await serve(one_byte_a_second, clock=clock)

    assert status == 408
    assert headers["connection"] == b"close"
    assert body["error"]["type"] == "request_timeout"
    assert "JOBGATE_BODY_MIN_RATE_BYTES_S" in body["error"]["message"]
    # 30 s, plus 1/500 s for each byte that came meanwhile.
    assert TIMEOUT_S <= clock.now <= TIMEOUT_S + 2


async def test_a_steady_upload_goes_through_however_long_it_takes() -> None:
    clock = FakeClock()
    a_kilobyte_a_second = [(b"x" * 1000, 1.0)] * 120

    status, _, body = await serve(a_kilobyte_a_second, clock=clock)

    assert (status, body) == (200, {"received": 120_000})
    assert clock.now == 120


async def test_time_the_handler_spends_is_not_counted_against_the_client() -> None:
    clock = FakeClock()

    async def slow_handler(scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_after_work() -> Message:
            clock.now += 10  # the handler works on each chunk for 10 (fake) seconds
            return await receive()

        await read_whole_body(scope, receive_after_work, send)

    status, _, body = await serve([(b"x" * 100, 0.0)] * 10, clock=clock, app=slow_handler)

    assert (status, body) == (200, {"received": 1000})


async def test_a_body_that_stops_coming_is_cut_off_after_the_read_timeout() -> None:
    status, headers, body = await serve([(b"{", 0.0)], read_timeout_s=0.2, then_stall=True)

    assert status == 408
    assert headers["connection"] == b"close"
    assert "JOBGATE_BODY_READ_TIMEOUT_S" in body["error"]["message"]
