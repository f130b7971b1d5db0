"""The one place errors become HTTP: status, `Retry-After`, and the JSON error shape.

`{"error": {"type", "message", "param"}}` everywhere (CONTRACT.md). Validation errors are
400 with the offending field in `param`, as OpenAI answers them. A database or Redis that
does not answer is a 503 with Retry-After, never a 500 or a hang; a value the database
refuses (a NUL in an id, a time out of range) is the request's fault, a 400.
"""

from __future__ import annotations

import sys
from typing import Any

import redis.exceptions
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import anthropic_wire
from core.errors import ApiError

log = structlog.get_logger("jobgate.api")

DEPENDENCY_RETRY_AFTER_S = 5


def error_body(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, "param": param}}


def no_retry_headers(status: int) -> dict[str, str]:
    """`x-should-retry: false` on a 409. OpenAI's and Anthropic's SDKs retry a 409 by default
    (for them a lock timeout); jobgate's are final (an Idempotency-Key reused with another body,
    a cancelled job, a name taken), so a retry would only hear the same answer."""
    return {"x-should-retry": "false"} if status == 409 else {}


def error_response(
    status: int,
    error_type: str,
    message: str,
    param: str | None = None,
    retry_after_s: int | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The error in the shape of the surface `path` belongs to: Anthropic's under
    `/anthropic/`, OpenAI's (jobgate's own) everywhere else."""
    headers = no_retry_headers(status)
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    if path.startswith(anthropic_wire.PREFIX):
        body = anthropic_wire.anthropic_error_body(status, error_type, message)
    else:
        body = error_body(error_type, message, param)
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    return ".".join(str(p) for p in loc) if loc else None


def describe_validation_error(errors: list[dict[str, Any]], prefix: str = "") -> tuple[str, str | None]:
    """OpenAI-style message and param for the first pydantic error."""
    first = errors[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    # A check of nested values (api/schemas.py `check_json_values`) says where, below its field.
    ctx = first.get("ctx") or {}
    if ctx.get("path"):
        param = f"{param}.{ctx['path']}" if param else str(ctx["path"])
    if prefix:
        param = f"{prefix}.{param}" if param else prefix
    if first.get("type") == "json_invalid":  # FastAPI's; its `loc` is the character position
        return f"The body is not valid JSON: {ctx.get('error') or first.get('msg')}.", None
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type") == "missing":
        if param is None:  # the body itself is missing
            return "The request has no body; send a JSON object with 'Content-Type: application/json'.", None
        return f"Missing required parameter: '{param}'.", param
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return "The request body must be a JSON object; send it with 'Content-Type: application/json'.", None
    message = first.get("msg", "invalid value")
    if first.get("type") == "value_error" and "error" in ctx:
        message = str(ctx["error"])  # without pydantic's "Value error, " in front
    return (f"Invalid value for '{param}': {message}." if param else f"{message}."), param


def describe_json_error(exc: BaseException) -> str:
    """Why a body's JSON could not be read, for a 400 (the reader's own words where they help)."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return f"a number in it has more than {sys.get_int_max_str_digits()} digits"
    return str(exc)


def _refused_value(exc: Exception) -> str | None:
    """The database's reason when it refused a value the request carried (SQLSTATE class 22,
    "data exception": a NUL in text, a time out of range): the request's fault, not an outage."""
    if not isinstance(exc, DBAPIError):
        return None
    # asyncpg's errors arrive wrapped by SQLAlchemy's adapter: the SQLSTATE is on the cause.
    states = [
        getattr(source, "sqlstate", None) for source in (exc.orig, getattr(exc.orig, "__cause__", None))
    ]
    if isinstance(exc, DataError) or any(isinstance(s, str) and s.startswith("22") for s in states):
        return (str(exc.orig).splitlines() or ["a value is out of range"])[0]
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status_code, exc.error_type, exc.message, exc.param, exc.retry_after_s, path=request.url.path
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI puts where the value came from ("body", "query", "header"...) first.
        errors = [{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in exc.errors()]
        message, param = describe_validation_error(errors)
        return error_response(400, "invalid_request_error", message, param, path=request.url.path)

    @app.exception_handler(ValidationError)
    async def _model_validation(request: Request, exc: ValidationError) -> JSONResponse:
        message, param = describe_validation_error([dict(e) for e in exc.errors()])
        return error_response(400, "invalid_request_error", message, param, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's own "There was an error parsing the body" (a number too long, nesting
            # too deep, bytes that are not UTF-8): say which.
            message = f"The body is not valid JSON: {describe_json_error(exc.__cause__)}."
            return error_response(400, "invalid_request_error", message, path=request.url.path)
        error_type = {
            404: "not_found_error",
            405: "invalid_request_error",
            408: "request_timeout",
            413: "request_too_large",
        }.get(exc.status_code, "api_error")
        return error_response(exc.status_code, error_type, str(exc.detail), path=request.url.path)

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        refused = _refused_value(exc)
        if refused is not None:
            log.info("value_refused_by_database", path=request.url.path, error=refused)
            return error_response(
                400,
                "invalid_request_error",
                f"The database refused a value of this request ({refused}); correct it and retry.",
                path=request.url.path,
            )
        log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
        return error_response(
            503,
            "service_unavailable",
            "The database is not reachable right now; retry shortly.",
            retry_after_s=DEPENDENCY_RETRY_AFTER_S,
            path=request.url.path,
        )

    for exc_class in (OperationalError, DBAPIError, PoolTimeout, ConnectionError, OSError):
        app.add_exception_handler(exc_class, _database_down)

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_down(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        log.warning("redis_unavailable", path=request.url.path, error=type(exc).__name__)
        return error_response(
            503,
            "service_unavailable",
            "Redis is not reachable right now; retry shortly.",
            retry_after_s=DEPENDENCY_RETRY_AFTER_S,
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return error_response(500, "api_error", "Internal error; it has been logged.", path=request.url.path)
