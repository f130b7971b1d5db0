"""`GET /ui`: the live page (batches, failures, a job's detail; providers and queues for
operators), and `GET /v1/job-counts`, the one view of its that no other route gives.

The page and its two static files need no key: it signs in with one the user types and calls
the JSON API with it (api/ui/). Its answer carries a Content-Security-Policy that allows
script, style and connections from this origin only, and nothing inline.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from api.deps import PrincipalDep, SessionDep, StateDep
from api.documentation import TIME, answer
from api.ui import ASSETS_DIR
from core.ids import id_floor
from core.representation import rfc3339
from core.store import jobs as store
from core.store.models import Job

router = APIRouter()

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# Counts cover the jobs made in the last day: one range of the (tenant_id, id) index, however
# long the tenant's history, polled every few seconds by each open page.
COUNTS_WINDOW = timedelta(days=1)
STATES = (store.QUEUED, store.RUNNING, store.SUCCEEDED, store.FAILED, store.CANCELLED)


class JobCounts(BaseModel):
    object: str = Field(description="job_counts")
    since: str = Field(description=TIME)
    counts: dict[str, int] = Field(description="queued, running, succeeded, failed, cancelled and total")


@router.get("/ui", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(ASSETS_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/ui/app.js", include_in_schema=False)
async def script() -> FileResponse:
    return FileResponse(ASSETS_DIR / "app.js", media_type="text/javascript", headers=PAGE_HEADERS)


@router.get("/ui/app.css", include_in_schema=False)
async def style_sheet() -> FileResponse:
    return FileResponse(ASSETS_DIR / "app.css", media_type="text/css", headers=PAGE_HEADERS)


@router.get(
    "/v1/job-counts",
    tags=["jobs"],
    response_model=None,
    responses={200: answer(JobCounts, "The tenant's jobs made in the last 24 hours, by state.")},
)
async def job_counts(state: StateDep, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    since = state.clock.utcnow() - COUNTS_WINDOW
    stmt = (
        select(Job.status, func.count())
        .where(
            Job.tenant_id == principal.tenant_id,
            Job.id >= id_floor("job", int(since.timestamp() * 1000)),
            Job.erased_at.is_(None),
        )
        .group_by(Job.status)
    )
    found = {status: int(count) for status, count in (await session.execute(stmt)).all()}
    counts = {status: found.get(status, 0) for status in STATES}
    return {
        "object": "job_counts",
        "since": rfc3339(since),
        "counts": {**counts, "total": sum(counts.values())},
    }
