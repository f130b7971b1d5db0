"""Request schemas at the HTTP edge: strict, so a typo is a 400 naming the field (as OpenAI does).

A job body is the OpenAI chat-completions request plus jobgate's own options. Limits here
keep one request bounded (messages, stop sequences, metadata) before anything is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.domain.chat import CHAT_FIELDS

MAX_MESSAGES = 2048
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_OUTPUT_TOKENS = 1_000_000


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


def _check_text(value: Any, path: str) -> None:
    """Strings must be valid Unicode without NUL: a lone surrogate (valid JSON `\\ud800`) or a
    `\\u0000` would pass JSON parsing and then be refused by Postgres (a 5xx, not a 400)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path or 'value'}: the NUL character (\\u0000) is not allowed in text")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path or 'value'}: contains a lone surrogate; send valid UTF-8 text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path)
            _check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{path}.{index}" if path else str(index))


class JobRequest(BaseModel):
    """`POST /v1/jobs`, each batch line's `body`, and `POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _check_text(data, "")
        return data

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

    def chat_body(self) -> dict[str, Any]:
        """The provider-facing body: the OpenAI chat fields that were set."""
        data = self.model_dump(include=set(CHAT_FIELDS), exclude_none=True, mode="json")
        data["messages"] = [m.model_dump(exclude_none=True, mode="json") for m in self.messages]
        return data


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=200)
    body: JobRequest


class BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Literal["interactive", "batch"] = "batch"
    webhook_url: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)
