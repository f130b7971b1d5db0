"""`stream: true` on `POST /v1/chat/completions`: OpenAI's chunks as server-sent events.

The job is made and run as any sync request's (`api/sync_calls.py`), with a `Relay`: when this
API process makes the call, the upstream's chunks reach the client as they come (limiter,
breaker and fallback have all decided before the first one), and the whole answer is still
recorded on the job (result, usage, cost, cache). An answer that did not come from a streamed
call here (a cache hit, a twin's, a retry the workers ran) is sent as the chunks it amounts to
once the job is final. A failure is an `error` event, as OpenAI sends
it; `[DONE]` ends every stream. A client that goes away closes the relay: the upstream call
ends at its next chunk and the job fails `client_disconnected`.

Streams are relayed by the API process that makes the call; if that process dies, its
clients' connections drop with it (there is no one left to send an error event), and the
reaper hands the job to the workers, whose answer the client can poll.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.deps import AppState, Principal
from api.sync_calls import Finished, SyncAsk, run_sync
from core.domain.relay import Relay, chunks_of
from core.errors import http_status_for, openai_code
from core.services.submit import JobSpec
from core.store import jobs as store


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class Events(Protocol):
    """How a surface writes a stream: from the chunks relayed, a whole answer, or an error."""

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]: ...

    def error(self, error_type: str, message: str) -> list[bytes]: ...

    def end(self) -> list[bytes]: ...


class OpenAIEvents:
    """OpenAI's `chat.completion.chunk` events as they came; the usage chunk only when asked
    (`stream_options.include_usage`); `[DONE]` at the end; an error as `{"error": {...}}`."""

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        return [sse(chunk)] if chunk.get("choices") or self.include_usage else []

    def error(self, error_type: str, message: str) -> list[bytes]:
        status = http_status_for(error_type)
        return [
            sse(
                {
                    "error": {
                        "type": error_type,
                        "code": openai_code(error_type),
                        "message": message,
                        "status": status,
                    }
                }
            )
        ]

    def end(self) -> list[bytes]:
        return [b"data: [DONE]\n\n"]


def stream_response(
    request: Request, spec: JobSpec, state: AppState, principal: Principal, ask: SyncAsk, events: Events
) -> StreamingResponse:
    relay = Relay()

    async def run() -> Finished:
        async with state.sessions() as session:  # the request's own session ends with its handler
            return await run_sync(request, spec, state, session, principal, ask, relay)

    job = asyncio.get_running_loop().create_task(run())
    job.add_done_callback(lambda _: relay.finish())
    return StreamingResponse(
        _stream(relay, job, state, events),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _stream(
    relay: Relay, job: asyncio.Task[Finished], state: AppState, events: Events
) -> AsyncIterator[bytes]:
    try:
        async for chunk in relay.chunks():
            for event in events.chunk(chunk):
                yield event
        finished = await job
        written: list[bytes] = []
        if finished.status is None:
            wait_s = state.settings.sync_timeout_s
            message = f"The job did not finish within {wait_s:g} s; poll GET /v1/jobs/{finished.job_id}."
            written = events.error("timeout", message)
        elif finished.status == store.SUCCEEDED:
            if not relay.started and finished.result is not None:
                written = [event for chunk in chunks_of(finished.result) for event in events.chunk(chunk)]
            written += events.end()
        else:
            error = finished.error or {"type": "server_error", "message": "The job failed."}
            written = events.error(error["type"], error.get("message", ""))
        for event in written:
            yield event
    finally:
        relay.close()
