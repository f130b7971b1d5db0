"""The shapes the API answers with (CONTRACT.md), as typed dicts: what the client returns is
the API's JSON itself, so a field the API adds later is there too, untyped."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobError(TypedDict):
    type: str
    message: str


class Job(TypedDict, total=False):
    id: str
    object: Literal["job"]
    status: JobStatus
    model: str
    priority: Literal["interactive", "batch"]
    batch_id: str | None
    custom_id: str | None
    metadata: dict[str, str]
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: dict[str, Any] | None
    error: JobError | None
    usage: dict[str, int] | None
    cost_usd: str | None
    served_by: dict[str, str] | None
    cached: bool


class BatchCounts(TypedDict):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class Batch(TypedDict, total=False):
    id: str
    object: Literal["batch"]
    status: Literal["in_progress", "completed", "cancelled"]
    counts: BatchCounts
    created_at: str
    completed_at: str | None
    usage: dict[str, int]
    cost_usd: str
    metadata: dict[str, str]


class ResultLine(TypedDict):
    """One line of `GET /v1/batches/{id}/results`: a job of the batch that is final."""

    custom_id: str
    job_id: str
    status: JobStatus
    result: dict[str, Any] | None
    error: JobError | None


def batch_is_final(batch: Batch) -> bool:
    """Every job of the batch is final (the status may lag its last job by a moment)."""
    counts = batch["counts"]
    return counts["queued"] + counts["running"] == 0
