"""Usage and cost per tenant, from SQL: what `GET /v1/usage` answers.

Counts the jobs answered by an upstream call (succeeded, not served from cache or from an
identical request in flight), so the totals match what the providers counted; cached
answers cost nothing and are reported separately as `cached_requests`.

Two sources make up the figures: the live jobs, and the rollups of jobs the retention purge
deleted (`usage_rollups`, one row per tenant, hour of finishing, served model, batch and key;
`rollup_rows` makes them), so purging never changes a total. A rollup keeps the hour, not
the second: with `from`/`to` inside an hour, a purged job counts by the hour it finished in.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Select, case, func, select, union_all

from core.store import jobs as store
from core.store.models import Job, UsageRollup, as_utc

GroupBy = Literal["model", "day", "batch"]

# What the purge reads of each job it deletes, in `rollup_rows`' order.
ROLLUP_COLUMNS = (
    Job.tenant_id,
    Job.status,
    Job.finished_at,
    Job.served_model,
    Job.batch_id,
    Job.api_key_id,
    Job.cached,
    Job.input_tokens,
    Job.output_tokens,
    Job.cost_usd,
)


def usage_stmt(
    tenant_id: str, *, group_by: GroupBy, start: datetime | None, end: datetime | None
) -> Select[Any]:  # type: ignore[type-arg]
    """Rows of (key, requests, cached_requests, input_tokens, output_tokens, cost_usd), by key."""
    both = union_all(
        _live_usage(tenant_id, group_by, start, end), _purged_usage(tenant_id, group_by, start, end)
    ).subquery()
    return (
        select(
            both.c.key,
            func.sum(both.c.requests),
            func.sum(both.c.cached_requests),
            func.sum(both.c.input_tokens),
            func.sum(both.c.output_tokens),
            func.sum(both.c.cost_usd),
        )
        .group_by(both.c.key)
        .order_by(both.c.key)
    )


def _live_usage(
    tenant_id: str, group_by: GroupBy, start: datetime | None, end: datetime | None
) -> Select[Any]:  # type: ignore[type-arg]
    key = {"model": Job.served_model, "day": func.date(Job.finished_at), "batch": Job.batch_id}[group_by]
    upstream = Job.cached.is_(False)
    stmt = (
        select(
            key.label("key"),
            func.sum(case((upstream, 1), else_=0)).label("requests"),
            func.sum(case((upstream, 0), else_=1)).label("cached_requests"),
            func.coalesce(func.sum(case((upstream, Job.input_tokens), else_=0)), 0).label("input_tokens"),
            func.coalesce(func.sum(case((upstream, Job.output_tokens), else_=0)), 0).label("output_tokens"),
            func.coalesce(func.sum(Job.cost_usd), 0).label("cost_usd"),
        )
        .where(Job.tenant_id == tenant_id, Job.status == store.SUCCEEDED)
        .group_by(key)
    )
    if start is not None:
        stmt = stmt.where(Job.finished_at >= start)
    if end is not None:
        stmt = stmt.where(Job.finished_at < end)
    return stmt


def _purged_usage(
    tenant_id: str, group_by: GroupBy, start: datetime | None, end: datetime | None
) -> Select[Any, int, int, int, int, Decimal]:
    rollup = UsageRollup
    key: Any = {"model": rollup.model, "day": func.date(rollup.hour), "batch": rollup.batch_id}[group_by]
    stmt = (
        select(
            key.label("key"),
            func.sum(rollup.requests).label("requests"),
            func.sum(rollup.cached_requests).label("cached_requests"),
            func.sum(rollup.input_tokens).label("input_tokens"),
            func.sum(rollup.output_tokens).label("output_tokens"),
            func.sum(rollup.cost_usd).label("cost_usd"),
        )
        .where(rollup.tenant_id == tenant_id)
        .group_by(key)
    )
    if start is not None:
        stmt = stmt.where(rollup.hour >= start)
    if end is not None:
        stmt = stmt.where(rollup.hour < end)
    return stmt


def rollup_rows(jobs: Iterable[Any]) -> list[dict[str, Any]]:
    """`usage_rollups` rows summing these jobs' usage (rows of `ROLLUP_COLUMNS`) as `usage_stmt`
    counts it: succeeded jobs only, cached ones as `cached_requests` with no tokens."""
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (
        tenant_id,
        status,
        finished_at,
        model,
        batch_id,
        api_key_id,
        cached,
        tokens_in,
        tokens_out,
        cost,
    ) in jobs:
        finished = as_utc(finished_at)
        if status != store.SUCCEEDED or finished is None:
            continue
        hour = finished.replace(minute=0, second=0, microsecond=0)
        row = sums.setdefault(
            (tenant_id, hour, model, batch_id, api_key_id),
            {
                "tenant_id": tenant_id,
                "hour": hour,
                "model": model,
                "batch_id": batch_id,
                "api_key_id": api_key_id,
                "requests": 0,
                "cached_requests": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": Decimal(0),
            },
        )
        if cached:
            row["cached_requests"] += 1
        else:
            row["requests"] += 1
            row["input_tokens"] += tokens_in or 0
            row["output_tokens"] += tokens_out or 0
        row["cost_usd"] += Decimal(str(cost or 0))
    return list(sums.values())


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
