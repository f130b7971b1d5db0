"""Anthropic's Messages wire format at jobgate's edge: a Messages request in, a Message out.

jobgate's jobs hold OpenAI chat-completions requests (the shape every adapter translates
from: core/providers/anthropic_messages.py turns one back into a Messages call when the target
is Anthropic). So `openai_body` translates a Messages request into that shape, and
`anthropic_message` the finished job's `chat.completion` into a Message. Errors on the
Anthropic surface take Anthropic's shape (`anthropic_error_body`). Shapes follow
`../shared/reference/wire-formats.md` §4.2 and the SDK's types (`anthropic/types/message.py`).

The request as it came is kept beside the translation (`with_original`): an Anthropic target
gets it unchanged, with what only Anthropic has (`thinking`, `cache_control`, system blocks,
`top_k`); an OpenAI-compatible target gets the translation, and refuses `thinking`
(`unsupported_parameter`, so the model's next target is tried). What the translation cannot
express is refused with a 400 naming it (documents, server tools). `stream: true` is written
as Anthropic's event sequence (`AnthropicEvents`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import MAX_MESSAGES, MAX_OUTPUT_TOKENS, CheckedBody
from core.domain.chat import ANTHROPIC_FIELD
from core.errors import InvalidRequest, http_status_for
from core.representation import rfc3339
from core.services.submit import JobSpec
from core.store import jobs as store
from core.store.jobs import BatchSummary
from core.store.models import Batch, as_utc

PREFIX = "/anthropic/"
BATCH_ID_PREFIX = "msgbatch"
# A message batch's window: its requests' jobs carry it as their deadline, so a request not
# started by then fails `deadline_exceeded`, which this surface reports as `expired`.
BATCH_EXPIRY = timedelta(hours=24)

# jobgate's error types (and HTTP statuses) in Anthropic's vocabulary.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "bad_request": "invalid_request_error",
    "authentication_error": "authentication_error",
    "auth": "authentication_error",
    "permission_denied": "permission_error",
    "not_found_error": "not_found_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limited": "rate_limit_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
}
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    params: dict[str, Any]


class MessageBatchCreate(CheckedBody):
    """`POST /anthropic/v1/messages/batches`."""

    model_config = ConfigDict(extra="forbid")

    requests: list[BatchItem] = Field(min_length=1)


class MessagesRequest(CheckedBody):
    """`POST /anthropic/v1/messages`: the fields of Anthropic's `MessageCreateParams` jobgate
    can carry, plus its own `priority`-free sync semantics."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int = Field(ge=1, le=MAX_OUTPUT_TOKENS)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    stream: bool | None = None
    thinking: dict[str, Any] | None = None
    service_tier: str | None = Field(default=None, max_length=32)


def openai_body(request: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat-completions body that asks the same as `request`."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text_of(request.system, "system")})
    for index, message in enumerate(request.messages):
        messages += _openai_messages(message, f"messages.{index}")
    body: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    for name in ("temperature", "top_p"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    if request.tools:
        body["tools"] = [_openai_tool(tool, f"tools.{i}") for i, tool in enumerate(request.tools)]
    if request.tool_choice:
        body.update(_openai_tool_choice(request.tool_choice))
    user_id = (request.metadata or {}).get("user_id")
    if user_id is not None:
        body["user"] = str(user_id)
    return body


def with_original(spec: JobSpec, request: MessagesRequest) -> JobSpec:
    """`spec` carrying the request as it came (`ChatRequest.anthropic`), for Anthropic targets."""
    original = request.model_dump(mode="json", exclude_none=True, exclude={"model", "stream"})
    return replace(spec, body={**spec.body, ANTHROPIC_FIELD: original})


def _text_of(content: str | list[dict[str, Any]], param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("Content is a string or a list of content blocks.", param=param)
    texts = []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind != "text":
            raise InvalidRequest(
                f"Only text blocks are supported here, not {kind!r}.", param=f"{param}.{index}"
            )
        texts.append(str(block.get("text", "")))
    return "\n\n".join(texts)


def _openai_messages(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise InvalidRequest("A message's role is 'user' or 'assistant'.", param=f"{param}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise InvalidRequest(
            "A message's content is a string or a list of content blocks (objects).", param=f"{param}.content"
        )
    if role == "assistant":
        return [_assistant_message(content, param)]
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    parts = [_user_part(b, f"{param}.content.{i}") for i, b in enumerate(content) if b not in results]
    # OpenAI wants each tool's answer right after the assistant turn that called it.
    out = [_tool_message(block) for block in results]
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: list[dict[str, Any]], param: str) -> dict[str, Any]:
    texts, calls = [], []
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise InvalidRequest(
                f"Unsupported block type {kind!r} in an assistant turn.", param=f"{param}.content.{index}"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = str(source.get("url"))
        else:
            raise InvalidRequest("An image's source is base64 data or a URL.", param=f"{param}.source")
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"Unsupported content block type {kind!r}.", param=f"{param}.type")


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    text = content if isinstance(content, str) else _text_of(content or [], "tool_result")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _openai_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom") or "name" not in tool:
        raise InvalidRequest(
            "Only custom tools (name, description, input_schema) are supported.", param=param
        )
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _openai_tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    mapped: dict[str, Any]
    if kind == "auto":
        mapped = {"tool_choice": "auto"}
    elif kind == "any":
        mapped = {"tool_choice": "required"}
    elif kind == "none":
        mapped = {"tool_choice": "none"}
    elif kind == "tool" and choice.get("name"):
        mapped = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest(
            "tool_choice.type is 'auto', 'any', 'tool' (with a name) or 'none'.", param="tool_choice"
        )
    if choice.get("disable_parallel_tool_use"):
        mapped["parallel_tool_calls"] = False
    return mapped


def anthropic_message(completion: dict[str, Any], *, job_id: str, requested_model: str) -> dict[str, Any]:
    """The Message a finished job's `chat.completion` body amounts to."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {"_raw": function.get("arguments")}
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
        )
    usage = completion.get("usage") or {}
    return {
        "id": f"msg_{job_id.removeprefix('job_')}",
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or requested_model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


def message_batch(batch: Batch, summary: BatchSummary, *, base_url: str) -> dict[str, Any]:
    """A `MessageBatch` (anthropic/types/messages/message_batch.py) for one of jobgate's
    batches: every request counts as `processing` until the whole batch has ended, then as
    succeeded, errored, canceled or expired (failed past its deadline, the batch's 24 h);
    `results_url` (absolute, as Anthropic's) once ended."""
    ended = summary.active == 0
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if ended:
        counts.update(
            succeeded=summary.counts[store.SUCCEEDED],
            errored=summary.counts[store.FAILED] - summary.past_deadline,
            canceled=summary.counts[store.CANCELLED],
            expired=summary.past_deadline,
        )
    else:
        counts["processing"] = batch.total
    created = as_utc(batch.created_at)
    assert created is not None
    status = "ended" if ended else ("canceling" if batch.cancelled_at is not None else "in_progress")
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "created_at": rfc3339(created),
        "expires_at": rfc3339(created + BATCH_EXPIRY),
        "ended_at": rfc3339(summary.last_finished_at or batch.cancelled_at) if ended else None,
        "cancel_initiated_at": rfc3339(batch.cancelled_at),
        "archived_at": None,
        "results_url": f"{base_url.rstrip('/')}{PREFIX}v1/messages/batches/{batch.id}/results"
        if ended
        else None,
    }


def batch_result(
    custom_id: str, job_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """One line of a message batch's results (`MessageBatchIndividualResponse`)."""
    if status == store.SUCCEEDED and result is not None:
        outcome: dict[str, Any] = {
            "type": "succeeded",
            "message": anthropic_message(result, job_id=job_id, requested_model=""),
        }
    elif status == store.CANCELLED:
        outcome = {"type": "canceled"}
    elif error is not None and error.get("type") == store.DEADLINE_EXCEEDED:
        outcome = {"type": "expired"}
    else:
        error = error or {"type": "server_error", "message": "The job failed."}
        status_code = http_status_for(error["type"])
        outcome = {
            "type": "errored",
            "error": anthropic_error_body(status_code, error["type"], error.get("message", "")),
        }
    return {"custom_id": custom_id, "result": outcome}


class AnthropicEvents:
    """A streamed answer as Anthropic's event sequence (`message_start`, content blocks with
    `text_delta` / `input_json_delta`, `message_delta`, `message_stop`), written from the
    OpenAI chunks the job's call relays; an error is an `error` event."""

    def __init__(self, requested_model: str) -> None:
        self.requested_model = requested_model
        self.started = False
        self.block: str | None = None
        self.index = -1
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            message: dict[str, Any] = {
                "id": f"msg_{str(chunk.get('id') or '').removeprefix('chatcmpl-')}",
                "type": "message",
                "role": "assistant",
                "model": chunk.get("model") or self.requested_model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            out.append(_event("message_start", {"message": message}))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if call.get("id"):
                    block = {"type": "tool_use", "id": call["id"], "name": function.get("name"), "input": {}}
                    out += self._open("tool_use", block, fresh=True)
                if function.get("arguments"):
                    out.append(
                        self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
                    )
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.usage = chunk.get("usage") or self.usage
        return out

    def _open(self, kind: str, block: dict[str, Any], *, fresh: bool = False) -> list[bytes]:
        if self.block == kind and not fresh:
            return []
        out = self._close()
        self.block, self.index = kind, self.index + 1
        return [*out, _event("content_block_start", {"index": self.index, "content_block": block})]

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        self.block = None
        return [_event("content_block_stop", {"index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def end(self) -> list[bytes]:
        stop = {"stop_reason": _STOP_REASONS.get(str(self.finish_reason), "end_turn"), "stop_sequence": None}
        usage = {
            "input_tokens": int(self.usage.get("prompt_tokens") or 0),
            "output_tokens": int(self.usage.get("completion_tokens") or 0),
        }
        return [
            *self._close(),
            _event("message_delta", {"delta": stop, "usage": usage}),
            _event("message_stop", {}),
        ]

    def error(self, error_type: str, message: str) -> list[bytes]:
        return [_event("error", anthropic_error_body(http_status_for(error_type), error_type, message))]


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    body = payload if kind == "error" else {"type": kind, **payload}
    return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def anthropic_error_body(status: int, error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error shape for one of jobgate's errors."""
    kind = _ERROR_TYPES.get(error_type) or _STATUS_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
