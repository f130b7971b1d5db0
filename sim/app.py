"""The simulator's ASGI application: routing, the request pipeline, and the `/sim/*` control routes.

`build_app(knobs)` is the composition root: it makes the knob set, rate limiter, fault injector
and stats, and hands them to `SimApp`. Every model request goes through the same pipeline,
whatever its wire format: authenticate, parse, compose the answer, charge the rate limits (429
straight away when short, as providers do), wait the latency, maybe fail as injected, answer.
The control routes read and change that state: `GET /sim/stats`, `GET|POST /sim/config`,
`POST /sim/reset[?config=true]`, `GET /sim/calls[?model=M&since=T]` and
`GET /sim/requests[?model=M]`; `GET /sim/identity/token` is an Entra ID managed identity
endpoint (`sim/identity.py`). Model routes are fixed paths (OpenAI, Anthropic, Gemini), or an
Azure deployment's path, which names the model itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from urllib.parse import parse_qs

from sim.answer import compose_answer
from sim.anthropic_api import AnthropicDialect
from sim.asgi import Receive, Scope, Send, hang_up, read_body, request_headers, send_json, send_stream
from sim.azure_api import azure_dialect
from sim.faults import FaultInjector, overrides_from_headers
from sim.gemini_api import GeminiDialect
from sim.identity import IdentityEndpoint
from sim.knobs import TIMEOUT, KnobError, Knobs, KnobSet
from sim.limits import RateLimiter
from sim.openai_api import OpenAIDialect
from sim.stats import Outcome, SeenRequest, Stats
from sim.wire import ChatRequest, Dialect, Headers, SimError

logger = logging.getLogger("sim")

_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
# The headers that can carry a caller's credentials; `/sim/requests` names which ones came.
_AUTH_HEADERS = ("authorization", "api-key", "x-api-key", "x-goog-api-key")


def _retry_after_headers(seconds: float, *, at_least_one_s: bool) -> Headers:
    whole_s = max(1, math.ceil(seconds)) if at_least_one_s else math.ceil(seconds)
    return [
        (b"retry-after", str(whole_s).encode()),
        (b"retry-after-ms", str(math.ceil(seconds * 1000)).encode()),
    ]


class SimApp:
    """The ASGI callable; all state lives on it, so one process may run several independent sims."""

    def __init__(self, knobs: KnobSet, limiter: RateLimiter, faults: FaultInjector, stats: Stats) -> None:
        self.knobs = knobs
        self.limiter = limiter
        self.faults = faults
        self.stats = stats
        self.identity = IdentityEndpoint()
        self._model_routes: dict[str, Dialect] = {
            "/v1/chat/completions": OpenAIDialect(),
            "/v1/messages": AnthropicDialect(),
            "/v1beta/openai/chat/completions": GeminiDialect(),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        dialect = self._model_routes.get(path) or azure_dialect(path, scope.get("query_string", b""))
        if dialect is not None and method == "POST":
            await self._serve_model_request(dialect, scope, receive, send)
        elif path.startswith("/sim/"):
            await self._serve_control(path, method, scope, receive, send)
        else:
            message = f"Unknown request URL: {method} {path}."
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
            await send_json(send, 404 if dialect is None else 405, {"error": error})

    async def _serve_model_request(
        self, dialect: Dialect, scope: Scope, receive: Receive, send: Send
    ) -> None:
        arrived_at = self.stats.request_arrived()
        request_id = f"req_{os.urandom(12).hex()}"
        headers: Headers = [(dialect.request_id_header, request_id.encode())]
        request: ChatRequest | None = None
        knobs = self.knobs.base
        key: str | None = None
        status, outcome, failure_name, input_tokens, output_tokens = 0, Outcome.REJECTED, None, 0, 0
        incoming: dict[str, str] = {}
        try:
            incoming = request_headers(scope)
            body = await read_body(receive)
            key = dialect.api_key(incoming)
            if key is None:
                raise SimError(401)
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise SimError(400, f"We could not parse the JSON body of your request: {exc}.") from exc
            request = dialect.parse(payload)
            self.stats.attribute(request.model, key)
            overrides = overrides_from_headers(incoming)
            knobs = self.knobs.for_model(request.model)
            answer = compose_answer(
                request.user_text,
                max_tokens=request.max_tokens,
                stop=request.stop,
                tool_name=request.tool_name,
            )
            # OpenAI charges max_tokens up front; without it, the answer's own size is the estimate.
            budget = request.max_tokens if request.max_tokens is not None else answer.completion_tokens
            verdict = self.limiter.admit(
                key, request.model, rpm=knobs.rpm, tpm=knobs.tpm, cost_tokens=request.prompt_tokens + budget
            )
            headers += dialect.limit_headers(verdict)
            if not verdict.admitted:
                outcome = Outcome.RATE_LIMITED
                if dialect.retry_after_header:
                    headers += _retry_after_headers(verdict.retry_after_s, at_least_one_s=True)
                raise SimError(429, limit=verdict, retry_after_s=max(1.0, verdict.retry_after_s))
            delay_s = self.faults.delay_s(knobs, overrides)
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            failure = self.faults.failure(knobs, overrides)
            if failure is not None:
                outcome, failure_name = Outcome.INJECTED, str(failure)
                if failure == TIMEOUT:
                    await hang_up(receive, send, knobs.hang_s)
                    return
                assert isinstance(failure, int)
                asked_s = knobs.retry_after_s if failure in _RETRY_AFTER_STATUSES else None
                if asked_s and dialect.retry_after_header:
                    headers += _retry_after_headers(asked_s, at_least_one_s=False)
                raise SimError(failure, retry_after_s=asked_s)
            status, outcome = 200, Outcome.OK
            input_tokens, output_tokens = request.prompt_tokens, answer.completion_tokens
            if request.stream:
                events = dialect.stream_events(request, answer)
                await send_stream(send, receive, events, headers, knobs.stream_delay_ms / 1000)
            else:
                await send_json(send, 200, dialect.success_body(request, answer, request_id), headers)
        except SimError as error:
            status = error.status
            answer_body = dialect.error_body(error, request, request_id, organization=knobs.organization)
            await send_json(send, status, answer_body, headers)
        finally:
            self.stats.request_seen(
                SeenRequest(
                    t=arrived_at,
                    path=scope["path"],
                    query=scope.get("query_string", b"").decode("latin-1"),
                    auth_headers=tuple(name for name in _AUTH_HEADERS if name in incoming),
                    key=key,
                    model=request.model if request else None,
                    status=status,
                )
            )
            self.stats.request_ended(
                arrived_at=arrived_at,
                status=status,
                outcome=outcome,
                model=request.model if request else None,
                key=key if request else None,
                failure=failure_name,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
            self.stats.request_left()

    async def _serve_control(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        query = {name: values[-1] for name, values in parse_qs(scope["query_string"].decode()).items()}
        route = (method, path)
        if route == ("GET", "/sim/stats"):
            await send_json(send, 200, self.stats.snapshot())
        elif route == ("GET", "/sim/config"):
            await send_json(send, 200, self.knobs.as_json())
        elif route == ("POST", "/sim/config"):
            await self._configure(receive, send)
        elif route == ("POST", "/sim/reset"):
            self.stats.reset()
            self.limiter.reset()
            self.identity.reset()
            if query.get("config", "").lower() in ("1", "true", "yes"):
                self.knobs.restore()
                self.faults.reseed(self.knobs.seed)
            await send_json(send, 200, {"reset": True, "config": self.knobs.as_json()})
        elif route == ("GET", "/sim/calls"):
            try:
                since = float(query["since"]) if "since" in query else None
            except ValueError:
                await send_json(send, 400, {"error": {"message": "since must be a unix time in seconds"}})
                return
            await send_json(send, 200, self.stats.calls(query.get("model"), since))
        elif route == ("GET", "/sim/requests"):
            await send_json(send, 200, self.stats.requests(query.get("model")))
        elif route == ("GET", "/sim/identity/token"):
            await send_json(send, *self.identity.issue(query, request_headers(scope)))
        elif route == ("GET", "/sim/identity"):
            await send_json(send, 200, self.identity.issued())
        else:
            await send_json(send, 404, {"error": {"message": f"Unknown control route: {method} {path}"}})

    async def _configure(self, receive: Receive, send: Send) -> None:
        try:
            patch = json.loads(await read_body(receive) or b"{}")
            self.knobs.apply(patch)
        except (json.JSONDecodeError, KnobError) as exc:
            await send_json(send, 400, {"error": {"message": f"invalid config: {exc}"}})
            return
        if "seed" in patch:
            self.faults.reseed(self.knobs.seed)
        logger.info("config changed: %s", patch)
        await send_json(send, 200, self.knobs.as_json())

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_app(knobs: Knobs | None = None, seed: int | None = None) -> SimApp:
    """A simulator starting from `knobs` (defaults: no latency, no failures, no limits)."""
    knob_set = KnobSet(knobs or Knobs(), seed)
    return SimApp(knob_set, RateLimiter(), FaultInjector(seed), Stats())
