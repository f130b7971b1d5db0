"""`GET /v1/usage`: tokens, requests and cost for the caller's tenant, grouped by model, day or batch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import PrincipalDep, SessionDep
from core.services.usage import GroupBy, usage_report, usage_stmt

router = APIRouter(prefix="/v1/usage", tags=["operators"])


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@router.get("")
async def usage(
    session: SessionDep,
    principal: PrincipalDep,
    from_: Annotated[datetime | None, Query(alias="from", description="RFC 3339, inclusive")] = None,
    to: Annotated[datetime | None, Query(description="RFC 3339, exclusive")] = None,
    group_by: GroupBy = "model",
) -> dict[str, Any]:
    stmt = usage_stmt(principal.tenant_id, group_by=group_by, start=_utc(from_), end=_utc(to))
    rows = list((await session.execute(stmt)).all())
    return usage_report(rows, group_by)
