"""OpenAI's Files and Batches wire shapes (`openai/types/file_object.py`, `batch.py`) for
jobgate's stored files and batches: all times Unix seconds, the batch's life cycle
(`failed`, `in_progress`, `cancelling`, `finalizing`, `completed`, `expired`, `cancelled`),
and the output and error lines of a finished batch (`../shared/reference/wire-formats.md`
§1-2). A batch's jobs carry its completion window's end as their deadline: a request not
started by then fails `deadline_exceeded`, an error line coded `batch_expired`, and the batch
ends `expired` (with whatever succeeded in its output file), as OpenAI's does."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from core.errors import http_status_for
from core.store import jobs as store
from core.store.jobs import BatchSummary
from core.store.models import Batch, OpenAIBatch, StoredFile, as_utc

COMPLETION_WINDOW = timedelta(hours=24)
ENDPOINT = "/v1/chat/completions"
EXPIRED_LINE_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def unix(value: datetime | None) -> int | None:
    value = as_utc(value)
    return None if value is None else int(value.timestamp())


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": unix(stored.created_at),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": unix(stored.expires_at),
        "status_details": None,
    }


def batch_status(record: OpenAIBatch, batch: Batch | None, summary: BatchSummary | None) -> str:
    if record.errors is not None or batch is None or summary is None:
        return "failed"
    if summary.active:
        return "cancelling" if batch.cancelled_at is not None else "in_progress"
    if record.finalized_at is None:
        return "finalizing"
    if batch.cancelled_at is not None:
        return "cancelled"
    return "expired" if summary.past_deadline else "completed"


def batch_object(record: OpenAIBatch, batch: Batch | None, summary: BatchSummary | None) -> dict[str, Any]:
    status = batch_status(record, batch, summary)
    created = as_utc(record.created_at)
    assert created is not None
    counts = {"total": 0, "completed": 0, "failed": 0}
    usage = None
    if batch is not None and summary is not None:
        done = summary.counts
        failed = (
            done[store.FAILED] + done[store.CANCELLED]
            if status in ("completed", "expired", "cancelled")
            else done[store.FAILED]
        )
        counts = {"total": batch.total, "completed": done[store.SUCCEEDED], "failed": failed}
        usage = {
            "input_tokens": summary.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": summary.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": summary.input_tokens + summary.output_tokens,
        }
    finished = unix(record.finalized_at)
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": record.errors,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": unix(created),
        "in_progress_at": None if status == "failed" else unix(created),
        "expires_at": unix(created + COMPLETION_WINDOW),
        "finalizing_at": unix(record.finalizing_at),
        "completed_at": finished if status == "completed" else None,
        "failed_at": unix(record.failed_at),
        "expired_at": finished if status == "expired" else None,
        "cancelling_at": unix(batch.cancelled_at) if batch is not None else None,
        "cancelled_at": finished if status == "cancelled" else None,
        "request_counts": counts,
        "metadata": record.metadata_,
        "usage": usage,
    }


def result_line(
    custom_id: str, job_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
) -> tuple[bool, dict[str, Any]]:
    """(goes to the output file, the line): a success for the output file, anything else for
    the error file, as OpenAI writes them."""
    line: dict[str, Any] = {"id": f"batch_req_{job_id.removeprefix('job_')}", "custom_id": custom_id}
    if status == store.SUCCEEDED:
        return True, {
            **line,
            "response": {"status_code": 200, "request_id": job_id, "body": result},
            "error": None,
        }
    if status == store.CANCELLED:
        cancelled = {"code": "batch_cancelled", "message": "The batch was cancelled before this request ran."}
        return False, {**line, "response": None, "error": cancelled}
    error = error or {"type": "server_error", "message": "The request failed."}
    if error["type"] == store.DEADLINE_EXCEEDED:
        return False, {**line, "response": None, "error": EXPIRED_LINE_ERROR}
    body = {
        "error": {
            "message": error.get("message", ""),
            "type": error["type"],
            "param": error.get("param"),
            "code": error["type"],
        }
    }
    response = {"status_code": http_status_for(error["type"]), "request_id": job_id, "body": body}
    return False, {**line, "response": response, "error": None}
