"""A streamed call's way out: the chunks an upstream sends, handed on as they come.

The API's streaming response owns a `Relay` and reads `chunks`; the provider adapter that
streams the call `send`s each `chat.completion.chunk` (OpenAI's shape, whichever provider)
and still returns the whole `Completion` at the end, so the job is recorded, cached and
billed like any other. Once a chunk has gone out (`started`), the call cannot be retried
or moved to another target: the client has the beginning of this answer. A reader that
goes away `close`s the relay; the next `send` raises `RelayClosed`, which ends the upstream
call.
"""

from __future__ import annotations

import asyncio
from typing import Any

_END = object()


class RelayClosed(Exception):
    """The reader went away (a client disconnected mid-stream)."""


class Relay:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._recorded: asyncio.Future[None] | None = None
        self.started = False
        self.closed = False

    def hold_until(self, recorded: asyncio.Future[None]) -> None:
        """Hand nothing out before `recorded` is done (the job's row inserted while its call
        starts): a client never reads an answer whose job was not recorded. If it fails, the
        chunks end there and the job's own failure is what the reader sees."""
        self._recorded = recorded

    async def send(self, chunk: dict[str, Any]) -> None:
        if self.closed:
            raise RelayClosed("the client is gone")
        self.started = True
        await self._queue.put(chunk)

    def finish(self) -> None:
        """No more chunks will come (the call ended, whatever its outcome)."""
        self._queue.put_nowait(_END)

    def close(self) -> None:
        self.closed = True

    async def chunks(self) -> Any:
        """The chunks sent, until `finish`."""
        while (chunk := await self._queue.get()) is not _END:
            if self._recorded is not None:
                try:
                    await asyncio.shield(self._recorded)
                except Exception:
                    return
                self._recorded = None
            yield chunk


def chunks_of(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole `chat.completion` as the chunks a stream of it would have carried (an answer
    from the cache, or from an upstream that did not stream): the role, the content, the tool
    calls, the finish, and the usage."""
    base = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]},
        {**base, "choices": [finish]},
    ]
    if completion.get("usage"):
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks
