"""What the OpenAPI document says jobgate answers: the error shape, jobs, batches, lists.

Documentation only. The answers are built by `core/representation.py` and `api/errors.py`;
routes declare these models in `responses=` (never `response_model=`), so nothing here can
reshape or filter a response. The shapes follow CONTRACT.md, and the end-to-end schemathesis
test holds each answer to them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Priority = Literal["interactive", "batch"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TIME = "RFC 3339, UTC, with milliseconds"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # the synchronous path adds `code`, and `job_id` on 504

    type: str
    message: str
    param: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class TokenUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class ServedBy(BaseModel):
    provider: str
    model: str | None


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="rate_limited, overloaded, timeout, server_error, bad_request, …")


class JobObject(BaseModel):
    id: str
    object: Literal["job"]
    status: JobStatus
    model: str
    priority: Priority
    batch_id: str | None
    custom_id: str | None
    metadata: dict[str, str]
    attempts: int
    created_at: str = Field(description=TIME)
    started_at: str | None = Field(description=TIME)
    finished_at: str | None = Field(description=TIME)
    result: dict[str, Any] | None = Field(description="the OpenAI chat.completion body")
    error: JobError | None
    usage: TokenUsage | None
    cost_usd: str | None = Field(description="a decimal string, USD")
    served_by: ServedBy | None
    cached: bool


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"]
    status: Literal["in_progress", "completed", "cancelled"]
    priority: Priority
    counts: BatchCounts
    created_at: str = Field(description=TIME)
    completed_at: str | None = Field(description=TIME)
    usage: TokenUsage
    cost_usd: str | None = Field(description="a decimal string, USD")
    metadata: dict[str, str]


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[BatchObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedObject(BaseModel):
    id: str
    object: Literal["job.deleted", "batch.deleted"]
    deleted: Literal[True]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape, on every answer of the `/anthropic/v1` surface that is not a 2xx."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: AnthropicUsage


def answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    """One entry of a route's `responses=`."""
    return {"model": model, "description": description}


# The Anthropic surface's errors, declared on its routes (they replace the app's below).
ANTHROPIC_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: answer(AnthropicError, "Anthropic's error shape; `error.type` as Anthropic names it.")
    for code in ("4XX", "5XX", 503)
}

# Every route, declared once on the app: any 4xx has the one error shape (this also keeps
# FastAPI from documenting the 422 that jobgate never sends), and 503 means "retry later".
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": answer(ErrorBody, "Refused: `error.message` says what to fix, `error.param` names the field."),
    503: {
        **answer(ErrorBody, "SQL or Redis does not answer right now; retry after `Retry-After` seconds."),
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    },
}
