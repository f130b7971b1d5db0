"""Request body size limits as pure ASGI middleware: 413 before the body is read.

A declared Content-Length over the limit is refused at once; a chunked body is counted as
it streams and refused the moment it passes the limit, so nothing over-size is buffered.
Batch uploads have their own, larger limit (CONTRACT.md: 1 MB per request, 200 MB per batch).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BATCH_PATHS = ("/v1/batches", "/anthropic/v1/messages/batches", "/openai/v1/files")


class BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing lets it through instead of answering 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body is larger than the limit of {limit} bytes.")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_batch_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_batch_bytes = max_batch_bytes

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") in BATCH_PATHS:
            return self.max_batch_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(send, limit)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body: dict[str, Any] = {
        "error": {
            "type": "request_too_large",
            "message": f"Request body is larger than the limit of {limit} bytes.",
            "param": None,
        }
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
