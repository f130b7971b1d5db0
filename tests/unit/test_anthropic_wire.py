"""Translation between Anthropic's Messages shapes and the OpenAI chat shape jobs hold
(api/anthropic_wire.py), without a server."""

from __future__ import annotations

import pytest

from api.anthropic_wire import (
    MessagesRequest,
    anthropic_error_body,
    anthropic_message,
    openai_body,
    with_original,
)
from core.domain.chat import ChatRequest
from core.errors import InvalidRequest
from core.providers.anthropic_messages import anthropic_request
from core.services.submit import JobSpec


def request(**fields: object) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "fast", "max_tokens": 32, **fields})


def test_system_turns_tools_and_choices_become_their_openai_counterparts() -> None:
    body = openai_body(
        request(
            system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                        }
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "t1", "name": "zoom", "input": {"x": 2}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "zoomed", "is_error": True}
                    ],
                },
            ],
            tools=[{"name": "zoom", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            temperature=0.5,
            top_k=5,
            metadata={"user_id": "u-1"},
        )
    )

    assert body["messages"] == [
        {"role": "system", "content": "One.\n\nTwo."},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}],
        },
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "zoom", "arguments": '{"x": 2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "Error: zoomed"},
    ]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "zoom", "parameters": {"type": "object"}}}
    ]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("required", False)
    assert (body["stop"], body["temperature"], body["user"], body["max_tokens"]) == (["END"], 0.5, "u-1", 32)
    assert "top_k" not in body


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
        ({"messages": [{"role": "user", "content": ["a bare string"]}]}, "messages.0.content"),
        ({"messages": [{"role": "assistant", "content": [1]}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": [2]}]}]},
            "tool_result.0",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 3}]}]}, "tool_result"),
    ],
)
def test_what_has_no_counterpart_is_refused_naming_it(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        openai_body(request(**{"messages": [{"role": "user", "content": "x"}], **fields}))
    assert refused.value.param == param


def test_a_completion_with_tool_calls_becomes_a_tool_use_message() -> None:
    completion = {
        "model": "gpt-4o-mini",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "zoom", "arguments": '{"x": 2}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }

    message = anthropic_message(completion, job_id="job_abc", requested_model="fast")

    assert message["id"] == "msg_abc" and message["model"] == "gpt-4o-mini"
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "c1", "name": "zoom", "input": {"x": 2}},
    ]
    assert (message["stop_reason"], message["usage"]) == ("tool_use", {"input_tokens": 7, "output_tokens": 3})


def test_errors_take_anthropics_types_by_kind_or_status() -> None:
    assert anthropic_error_body(429, "rate_limited", "slow")["error"]["type"] == "rate_limit_error"
    assert anthropic_error_body(502, "server_error", "boom") == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
    }
    assert anthropic_error_body(404, "whatever", "gone")["error"]["type"] == "not_found_error"


def test_the_original_request_travels_with_the_job_for_anthropic_targets() -> None:
    original = request(
        system=[{"type": "text", "text": "Long context.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "x"}],
        thinking={"type": "enabled", "budget_tokens": 2048},
        top_k=5,
    )
    spec = with_original(JobSpec(body=openai_body(original), priority="interactive"), original)

    chat = ChatRequest.from_body(spec.body)
    assert chat.anthropic is not None and chat.anthropic["thinking"]["budget_tokens"] == 2048
    sent = anthropic_request(chat, "claude-x", provider="claude")
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"} and sent["top_k"] == 5
    assert sent["model"] == "claude-x" and "stream" not in sent
