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


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyGateMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
            if bearer_token(header) is None:
                refused = Unauthenticated(MISSING_KEY)
                await error_response(refused.status_code, refused.error_type, refused.message)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
