"""`GET /v1/usage`: tokens, requests and cost for the caller's tenant, grouped by model, day or batch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState, Principal, PrincipalDep, SessionDep, StateDep
from core.ratelimit.budget import SpendLedger
from core.representation import money, rfc3339
from core.services.usage import GroupBy, usage_report, usage_stmt
from core.store.models import ApiKey, Tenant
from core.tenancy import KeyBudget, resolve_policy

router = APIRouter(prefix="/v1/usage", tags=["operators"])


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@router.get("")
async def usage(
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    from_: Annotated[datetime | None, Query(alias="from", description="RFC 3339, inclusive")] = None,
    to: Annotated[datetime | None, Query(description="RFC 3339, exclusive")] = None,
    group_by: GroupBy = "model",
) -> dict[str, Any]:
    stmt = usage_stmt(principal.tenant_id, group_by=group_by, start=_utc(from_), end=_utc(to))
    rows = list((await session.execute(stmt)).all())
    return {**usage_report(rows, group_by), "budgets": await _budgets(state, session, principal)}


async def _budgets(state: AppState, session: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    """Spend this period against each budget of the tenant and of the calling key (spent,
    and reserved by calls in flight), as the workers count it."""
    tenant = (await session.execute(select(Tenant).where(Tenant.id == principal.tenant_id))).scalars().one()
    key = None
    if principal.key_id is not None:
        row = (
            await session.execute(
                select(ApiKey.id, ApiKey.budget_usd_day, ApiKey.budget_usd_month).where(
                    ApiKey.id == principal.key_id
                )
            )
        ).first()
        key = KeyBudget(*row) if row is not None else None
    ledger = SpendLedger(state.redis, state.keys)
    budgets = ledger.budgets(resolve_policy(tenant, state.config), key, datetime.now(UTC))
    spent = await ledger.spent_usd(budgets)
    return [
        {
            "owner": budget.owner.split(" ")[0],
            "period": budget.period,
            "limit_usd": money(budget.cap_usd),
            "spent_usd": money(used),
            "resets_at": rfc3339(budget.resets_at),
        }
        for budget, used in zip(budgets, spent, strict=True)
    ]
