"""Request schemas at the HTTP edge: strict, so a typo is a 400 naming the field (as OpenAI does).

A job body is the OpenAI chat-completions request plus jobgate's own options. Limits here
keep one request bounded (messages, stop sequences, metadata) before anything is stored.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.domain.chat import CHAT_FIELDS

MAX_MESSAGES = 2048
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_OUTPUT_TOKENS = 1_000_000
# Far deeper than any tool's JSON schema or content part nests; shallow enough to walk recursively.
MAX_JSON_DEPTH = 64
MAX_ID_CHARS = 64  # an object id in a query parameter (ours are 30: "job_" + 26)


class ChatMessage(BaseModel):
    # Content parts, tool calls and names vary by provider and SDK version: accepted as given.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs are allowed")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata keys are at most {MAX_METADATA_KEY} characters ({key[:20]!r}…)")
        if len(item) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata values are at most {MAX_METADATA_VALUE} characters (key {key!r})")
    return value


def _refused(path: str, reason: str) -> PydanticCustomError:
    # The path goes in the context, so the error's `param` names the exact value (api/errors.py).
    return PydanticCustomError("invalid_json_value", reason, {"path": path})


def check_json_values(value: Any, path: str = "", depth: int = 0) -> None:
    """Refuse what JSON parsing lets through but jobgate cannot keep as it was sent.

    NUL (`\\u0000`) and lone surrogates (valid JSON `\\ud800`) in text: Postgres refuses the
    first and UTF-8 cannot encode the second, so either would fail at the database as a 5xx.
    NaN and Infinity (Python's JSON reader accepts them): pydantic would store null in their
    place without a word. Nesting past MAX_JSON_DEPTH: serialising it exhausts the stack.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise _refused(path, "the NUL character (\\u0000) is not allowed in text")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _refused(path, "contains a lone surrogate; send valid UTF-8 text") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _refused(path, "NaN and Infinity are not JSON numbers; send a finite number")
    elif isinstance(value, dict | list):
        if depth >= MAX_JSON_DEPTH:
            raise _refused(path, f"nested more than {MAX_JSON_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            check_json_values(key, path, depth + 1)
            check_json_values(item, f"{path}.{key}" if path else str(key), depth + 1)


class CheckedBody(BaseModel):
    """A request body whose every value passes `check_json_values` before its fields are read."""

    @model_validator(mode="before")
    @classmethod
    def _valid_json_values(cls, data: Any) -> Any:
        check_json_values(data)
        return data


class JobRequest(CheckedBody):
    """`POST /v1/jobs`, each batch line's `body`, and `POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: Literal[1] | None = None
    stream: bool | None = None
    # Sent by OpenAI's SDKs for streamed calls; a call answered whole has no use for it.
    stream_options: dict[str, Any] | None = None
    # Forwarded as given to OpenAI-compatible upstreams (an Anthropic target drops them).
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, int] | None = Field(default=None, max_length=300)
    reasoning_effort: str | None = Field(default=None, max_length=32)
    verbosity: str | None = Field(default=None, max_length=32)
    service_tier: str | None = Field(default=None, max_length=32)
    store: bool | None = None
    modalities: list[str] | None = Field(default=None, max_length=8)
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    web_search_options: dict[str, Any] | None = None

    priority: Literal["interactive", "batch"] | None = None
    webhook_url: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, str] | None = None
    cache: bool | None = None
    deadline: datetime | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for token, bias in (value or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"biases are between -100 and 100 (token {token!r}: {bias})")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline_in_range(cls, value: datetime | None) -> datetime | None:
        # Year 9999 at -23:59 is year 10000 in UTC: no database can store it.
        if value is not None and value.tzinfo is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError("the time is out of range once converted to UTC") from None
        return value

    def chat_body(self) -> dict[str, Any]:
        """The provider-facing body: the OpenAI chat fields that were set."""
        data = self.model_dump(include=set(CHAT_FIELDS), exclude_none=True, mode="json")
        data["messages"] = [m.model_dump(exclude_none=True, mode="json") for m in self.messages]
        return data


class BatchLine(BaseModel):
    """A batch line: jobgate's own (`custom_id`, `body`), or an OpenAI batch file's line, which
    also names its `method` and `url` (only chat completions can be batched here)."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=200)
    body: JobRequest
    method: Literal["POST"] | None = None
    url: Literal["/v1/chat/completions"] | None = None

    @field_validator("custom_id", mode="before")
    @classmethod
    def _valid_custom_id(cls, value: Any) -> Any:
        check_json_values(value)
        return value


class BatchOptions(CheckedBody):
    model_config = ConfigDict(extra="forbid")

    priority: Literal["interactive", "batch"] = "batch"
    webhook_url: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)
