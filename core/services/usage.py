"""Usage and cost per tenant, from SQL: what `GET /v1/usage` answers.

Counts the jobs answered by an upstream call (succeeded, not served from cache or from an
identical request in flight), so the totals match what the providers counted; cached
answers cost nothing and are reported separately as `cached_requests`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Select, case, func, select

from core.store import jobs as store
from core.store.models import Job

GroupBy = Literal["model", "day", "batch"]


def usage_stmt(
    tenant_id: str, *, group_by: GroupBy, start: datetime | None, end: datetime | None
) -> Select[Any]:  # type: ignore[type-arg]
    key = {
        "model": Job.served_model,
        "day": func.date(Job.finished_at),
        "batch": Job.batch_id,
    }[group_by]
    upstream = Job.cached.is_(False)
    stmt = (
        select(
            key.label("key"),
            func.sum(case((upstream, 1), else_=0)),
            func.sum(case((upstream, 0), else_=1)),
            func.coalesce(func.sum(case((upstream, Job.input_tokens), else_=0)), 0),
            func.coalesce(func.sum(case((upstream, Job.output_tokens), else_=0)), 0),
            func.coalesce(func.sum(Job.cost_usd), 0),
        )
        .where(Job.tenant_id == tenant_id, Job.status == store.SUCCEEDED)
        .group_by(key)
        .order_by(key)
    )
    if start is not None:
        stmt = stmt.where(Job.finished_at >= start)
    if end is not None:
        stmt = stmt.where(Job.finished_at < end)
    return stmt


def usage_report(rows: list[Any], group_by: GroupBy) -> dict[str, Any]:
    data = []
    total: dict[str, Any] = {"requests": 0, "cached_requests": 0, "input_tokens": 0, "output_tokens": 0}
    total_cost = Decimal(0)
    for key, requests, cached, tokens_in, tokens_out, cost in rows:
        entry = {
            group_by: str(key) if key is not None else None,
            "requests": int(requests or 0),
            "cached_requests": int(cached or 0),
            "input_tokens": int(tokens_in or 0),
            "output_tokens": int(tokens_out or 0),
            "cost_usd": _money(cost),
        }
        data.append(entry)
        for name in ("requests", "cached_requests", "input_tokens", "output_tokens"):
            total[name] += entry[name]
        total_cost += Decimal(str(cost or 0))
    total["cost_usd"] = _money(total_cost)
    return {"object": "list", "data": data, "total": total}


def _money(value: Any) -> str:
    text = format(Decimal(str(value or 0)).normalize(), "f")
    return "0" if text in ("-0", "") else text
