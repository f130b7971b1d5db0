"""`/healthz` (the process runs) and `/readyz` (SQL and Redis answer, each within a bound)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_sql(state: Any) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), state.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"database: {type(exc).__name__}"
    return None


async def _check_redis(state: Any) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await state.redis.ping()
    except Exception as exc:
        return f"redis: {type(exc).__name__}"
    return None


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    problems = [p for p in await asyncio.gather(_check_sql(state), _check_redis(state)) if p]
    if problems:
        body = {
            "status": "unavailable",
            "error": {
                "type": "service_unavailable",
                "message": "Not ready: " + "; ".join(problems),
                "param": None,
            },
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "database": "ok", "redis": "ok"})
