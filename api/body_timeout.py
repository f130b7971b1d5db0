"""Request body deadlines as pure ASGI middleware: a body that stops coming ends in a 408.

uvicorn has no body-read timeout: a client may send its headers and then one byte a second,
keeping its request, its socket and whatever the handler holds for as long as it likes. Two
limits, both counted only while the handler waits for the client (time the handler spends on
what has already come is not the client's):

- no chunk for `JOBGATE_BODY_READ_TIMEOUT_S` (30 s);
- the whole body at `JOBGATE_BODY_MIN_RATE_BYTES_S` (500 bytes/s) at least, past that same
  allowance: the waits may add up to `timeout + received / rate` seconds, as Apache's
  mod_reqtimeout `body=30,MinRate=500` allows. A large upload on a slow link goes through; a
  trickle does not.

The 408 has jobgate's error shape and `Connection: close`, so the server drops the rest of
the body with the connection. Reads after the body has ended (a streaming response listening
for the client's disconnect) are not timed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

UNTIMED_METHODS = ("GET", "HEAD", "OPTIONS", "DELETE")


class BodyReadTimeout(HTTPException):
    """An HTTPException so FastAPI's body parsing lets it through instead of answering 400."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message)


class BodyTimeoutMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        read_timeout_s: float,
        min_rate_bytes_s: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.read_timeout_s = read_timeout_s
        self.min_rate_bytes_s = min_rate_bytes_s
        self._monotonic = monotonic

    def _refusal(self, idle: bool) -> BodyReadTimeout:
        if idle:
            return BodyReadTimeout(
                f"No part of the request body arrived for {self.read_timeout_s:g} s"
                " (JOBGATE_BODY_READ_TIMEOUT_S); send the body without pausing."
            )
        return BodyReadTimeout(
            f"The request body arrived slower than {self.min_rate_bytes_s} bytes/s"
            " (JOBGATE_BODY_MIN_RATE_BYTES_S); send it faster, or less of it at once."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in UNTIMED_METHODS:
            await self.app(scope, receive, send)
            return
        waited_s = 0.0
        received = 0
        body_done = False
        timed_out = False
        started = False

        async def timed_receive() -> Message:
            nonlocal waited_s, received, body_done, timed_out
            if body_done:
                return await receive()
            allowance_s = self.read_timeout_s + received / self.min_rate_bytes_s - waited_s
            wait_s = min(self.read_timeout_s, allowance_s)
            began = self._monotonic()
            try:
                if wait_s <= 0:
                    raise TimeoutError
                # `timeout`, not `wait_for`: no task a message (a body already read is no wait).
                async with asyncio.timeout(wait_s):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise self._refusal(idle=wait_s >= self.read_timeout_s) from None
            finally:
                waited_s += self._monotonic() - began
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if timed_out:
                    message.setdefault("headers", []).append((b"connection", b"close"))
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        except BodyReadTimeout as exc:
            if started:
                raise
            refused = error_response(408, "request_timeout", exc.detail, path=scope["path"])
            refused.headers["connection"] = "close"
            await refused(scope, timed_receive, send)
