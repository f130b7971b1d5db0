"""A missing, wrong, revoked or expired API key is refused before anything reads the body.

FastAPI parses and validates a route's JSON body before it runs the route's dependencies, and
the body limit answers 413 before routing; without this gate a request with a bad key and a
malformed or over-size body would hear about its body (400, 413) before being told its key is
no good. OpenAI answers 401 first, and so does jobgate. The key is checked here
(`api.authentication.check_key`) and its holder left in the request's scope for the route's
dependencies (`api.deps`), which decide what its scope may do.
"""

from __future__ import annotations

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.authentication import HOLDER_SCOPE_KEY, check_key
from api.errors import error_response
from core.errors import ApiError, Unauthenticated

MISSING_KEY = "Missing API key: send 'Authorization: Bearer <key>' (create one with `jobgate keys create`)."
# The surfaces whose every route needs a key; under /anthropic/ the key may come as `x-api-key`,
# as Anthropic's API takes it (its SDK sends Bearer since 2.0, `x-api-key` before).
KEYED_PREFIXES = ("/v1/", "/openai/v1/", "/anthropic/v1/")
ANTHROPIC_PREFIX = "/anthropic/"


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def api_key_of(path: str, authorization: str, x_api_key: str) -> str | None:
    """The caller's key: the Bearer token, or under /anthropic/ the `x-api-key` header."""
    token = bearer_token(authorization)
    if token is None and path.startswith(ANTHROPIC_PREFIX) and x_api_key.strip():
        return x_api_key.strip()
    return token


class KeyGateMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path == "/v1" or path.startswith(KEYED_PREFIXES):
            headers = {
                k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"authorization", b"x-api-key")
            }
            token = api_key_of(path, headers.get(b"authorization", ""), headers.get(b"x-api-key", ""))
            try:
                if token is None:
                    raise Unauthenticated(MISSING_KEY)
                client = scope.get("client")
                holder = await check_key(scope["app"].state.jobgate, token, client[0] if client else None)
            except ApiError as refused:
                answer = error_response(
                    refused.status_code,
                    refused.error_type,
                    refused.message,
                    refused.param,
                    refused.retry_after_s,
                    path=path,
                )
                await answer(scope, receive, send)
                return
            except (SQLAlchemyError, RedisError, OSError):
                # SQL or Redis down: the route's own check meets it again, where the app's
                # error handlers answer 503 with Retry-After.
                holder = None
            if holder is not None:
                scope.setdefault("state", {})[HOLDER_SCOPE_KEY] = holder
        await self.app(scope, receive, send)
