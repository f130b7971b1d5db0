"""The few raw ASGI moves the simulator needs: read a body, answer JSON, and hang up unanswered.

The simulator talks ASGI directly instead of through a framework because it must answer
thousands of requests a second on two cores, and because one of its failures, "timeout", has to
close the TCP connection without any response, which no framework offers: uvicorn answers 500
for an app that returns without starting a response, unless the connection is already gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def request_headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name (ASGI servers already lower-case them)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def hang_up(receive: Receive, send: Send, hold_s: float) -> None:
    """Hold the request open for `hold_s` seconds (or until the client leaves), then close unanswered."""
    try:
        await asyncio.wait_for(_until_disconnect(receive), timeout=hold_s)
        return
    except TimeoutError:
        pass
    # uvicorn's receive() is a bound method of its per-request cycle, which holds the transport.
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        await _until_disconnect(receive)
        return
    # Any other server: promise a body that never comes, so the client sees a broken response.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
    await send({"type": "http.response.body", "body": b"", "more_body": True})


async def send_stream(
    send: Send, receive: Receive, events: list[bytes], headers: list[tuple[bytes, bytes]], delay_s: float
) -> None:
    """A 200 `text/event-stream` answer: `events` one after another, `delay_s` apart; it stops
    when the client goes away, as a real upstream stops generating."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    *headers,
                ],
            }
        )
        for index, event in enumerate(events):
            if index and delay_s > 0:
                await asyncio.sleep(delay_s)
            if gone.is_set():
                return
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()
