"""The API request's span (core/tracing.py), the root of a job's trace: added to the app only
while traces are on, outermost, so every answer (a 413, a 401) has one.

It continues the caller's W3C `traceparent` when one is sent, and is current while the route
runs, so the jobs the request submits store it as their trace. Named by the route's template
(`POST /v1/jobs/{job_id}/cancel`). It records the path but never the query string, where
`?webhook_url=` may carry a receiver's token: the reason FastAPI's own telemetry stays off (it
would export the query; it traces only through the global tracer provider, which jobgate never
sets).
"""

from __future__ import annotations

from opentelemetry.trace import Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import tracing

_TRACE_HEADERS = (b"traceparent", b"tracestate")


class RequestSpanMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS
        }
        method = scope["method"]
        status_code = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        with tracing.server_span(method, scope["path"], headers) as span:
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status_code)
                request_id = scope.get("state", {}).get("request_id")
                if request_id is not None:
                    span.set_attribute("jobgate.request_id", request_id)
                if status_code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
