"""`stream: true` on `POST /v1/chat/completions`: OpenAI's chunks as server-sent events.

The job is made and run as any sync request's (`api/sync_calls.py`), with a `Relay`: when this
API process makes the call, the upstream's chunks reach the client as they come (limiter,
breaker and fallback have all decided before the first one), and the whole answer is still
recorded on the job (result, usage, cost, cache). An answer that did not come from a streamed
call here (a cache hit, a twin's, a retry the workers ran, an Anthropic target) is sent as the
chunks it amounts to once the job is final. A failure is an `error` event, as OpenAI sends
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
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.deps import AppState, Principal
from api.sync_calls import Finished, SyncAsk, run_sync
from core.domain.relay import Relay, chunks_of
from core.errors import http_status_for
from core.services.submit import JobSpec
from core.store import jobs as store


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def stream_response(
    request: Request,
    spec: JobSpec,
    state: AppState,
    principal: Principal,
    ask: SyncAsk,
    *,
    include_usage: bool,
) -> StreamingResponse:
    relay = Relay()

    async def run() -> Finished:
        async with state.sessions() as session:  # the request's own session ends with its handler
            return await run_sync(request, spec, state, session, principal, ask, relay)

    job = asyncio.get_running_loop().create_task(run())
    job.add_done_callback(lambda _: relay.finish())
    return StreamingResponse(
        _events(relay, job, state, include_usage=include_usage),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _events(
    relay: Relay, job: asyncio.Task[Finished], state: AppState, *, include_usage: bool
) -> AsyncIterator[bytes]:
    def wanted(chunk: dict[str, Any]) -> bool:
        return bool(chunk.get("choices")) or include_usage  # the usage chunk only when asked

    try:
        async for chunk in relay.chunks():
            if wanted(chunk):
                yield sse(chunk)
        finished = await job
        if finished.status is None:
            yield sse(
                _error(
                    "timeout",
                    f"The job did not finish within {state.settings.sync_timeout_s:g} s;"
                    f" poll GET /v1/jobs/{finished.job_id}.",
                )
            )
        elif finished.status == store.SUCCEEDED:
            if not relay.started and finished.result is not None:
                for chunk in chunks_of(finished.result):
                    if wanted(chunk):
                        yield sse(chunk)
        else:
            error = finished.error or {"type": "server_error", "message": "The job failed."}
            yield sse(_error(error["type"], error.get("message", "")))
        yield b"data: [DONE]\n\n"
    finally:
        relay.close()


def _error(error_type: str, message: str) -> dict[str, Any]:
    """OpenAI's in-stream error (the SDK raises it as an `APIError`)."""
    return {
        "error": {
            "type": error_type,
            "code": error_type,
            "message": message,
            "status": http_status_for(error_type),
        }
    }
