"""A missing API key is refused before anything reads the request's body.

FastAPI parses and validates a route's JSON body before it runs the route's dependencies, and
the body limit answers 413 before routing; without this gate a request with no key and a
malformed or over-size body would hear about its body (400, 413) before being told it has no
key. OpenAI answers 401 first, and so does jobgate. Only the header's presence and scheme are
checked here; the key itself is checked against SQL by `api.deps.get_principal`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from core.errors import Unauthenticated

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
            if api_key_of(path, headers.get(b"authorization", ""), headers.get(b"x-api-key", "")) is None:
                refused = Unauthenticated(MISSING_KEY)
                await error_response(refused.status_code, refused.error_type, refused.message, path=path)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
