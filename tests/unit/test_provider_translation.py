"""Pure specifications of the provider adapters: request and response translation between the
OpenAI and Anthropic shapes, rate-limit and retry-after header parsing, and the mapping of SDK
exceptions onto jobgate's named upstream errors (built from real SDK exception classes)."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from core.config import GatewayConfig, dev_config_dict
from core.domain.chat import ChatRequest, RateLimitHeaders
from core.errors import (
    AuthFailed,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    ContentFiltered,
    NotFoundUpstream,
    Overloaded,
    RateLimited,
    ServerError,
    Truncated,
    Unsupported,
    UpstreamError,
    UpstreamTimeout,
)
from core.providers import build_providers, close_providers
from core.providers.anthropic import SDK_ERRORS as ANTHROPIC_SDK_ERRORS
from core.providers.anthropic import AnthropicProvider, anthropic_rate_limits, parse_reset_timestamp_s
from core.providers.anthropic_messages import anthropic_request, openai_body
from core.providers.base import completion_from_openai_body
from core.providers.errors import SdkErrorTypes, retry_after_s, translate_sdk_error
from core.providers.openai import SDK_ERRORS as OPENAI_SDK_ERRORS
from core.providers.openai import OpenAIProvider, openai_rate_limits, parse_go_duration_s

NOW = datetime(2025, 10, 25, 12, 0, 0, tzinfo=UTC)
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def translate(messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    return anthropic_request(ChatRequest(messages=messages, params=params), "claude-x", provider="claude")


# --- OpenAI request → Anthropic request --------------------------------------------------------


def test_anthropic_adapter_moves_system_messages_to_top_level() -> None:
    arguments = translate(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert arguments["system"] == "Be brief.\n\nAnswer in French."
    assert arguments["messages"] == [{"role": "user", "content": "hi"}]


def test_anthropic_adapter_sends_no_system_when_there_is_none() -> None:
    assert "system" not in translate([{"role": "user", "content": "hi"}])


def test_anthropic_adapter_merges_consecutive_messages_of_one_role() -> None:
    arguments = translate(
        [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
        ]
    )
    assert arguments["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
    ]


def test_anthropic_adapter_drops_empty_text_that_anthropic_rejects() -> None:
    arguments = translate([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])
    assert arguments["messages"] == [{"role": "user", "content": "hi"}]


def test_anthropic_adapter_sends_data_url_images_as_base64_and_other_images_as_urls() -> None:
    arguments = translate(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert arguments["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_anthropic_adapter_turns_tool_calls_into_tool_use_and_tool_messages_into_one_user_message() -> None:
    arguments = translate(
        [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"c": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"c": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        ]
    )
    assert arguments["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "w", "input": {"c": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "w", "input": {"c": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
            ],
        },
    ]


def test_anthropic_adapter_prefers_max_completion_tokens_and_defaults_max_tokens_to_4096() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert translate(messages)["max_tokens"] == 4096
    assert translate(messages, max_tokens=100)["max_tokens"] == 100
    assert translate(messages, max_tokens=100, max_completion_tokens=50)["max_tokens"] == 50


@pytest.mark.parametrize(("stop", "sequences"), [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_anthropic_adapter_sends_stop_as_stop_sequences(stop: str | list[str], sequences: list[str]) -> None:
    assert translate([{"role": "user", "content": "hi"}], stop=stop)["stop_sequences"] == sequences


@pytest.mark.parametrize(("temperature", "sent"), [(0.3, 0.3), (1.7, 1.0), (-1, 0.0)])
def test_anthropic_adapter_clamps_temperature_to_anthropics_range(temperature: float, sent: float) -> None:
    assert translate([{"role": "user", "content": "hi"}], temperature=temperature)["temperature"] == sent


def test_anthropic_adapter_keeps_temperature_over_top_p_since_claude_rejects_both() -> None:
    arguments = translate([{"role": "user", "content": "hi"}], temperature=0.2, top_p=0.9)
    assert (arguments["temperature"], "top_p" in arguments) == (0.2, False)
    assert translate([{"role": "user", "content": "hi"}], top_p=0.9)["top_p"] == 0.9


def test_anthropic_adapter_translates_function_tools() -> None:
    schema = {"type": "object", "properties": {"c": {"type": "string"}}}
    tools = [
        {"type": "function", "function": {"name": "w", "description": "weather", "parameters": schema}},
        {"type": "function", "function": {"name": "now"}},
    ]
    assert translate([{"role": "user", "content": "hi"}], tools=tools)["tools"] == [
        {"name": "w", "description": "weather", "input_schema": schema},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("tool_choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "w"}}, {"type": "tool", "name": "w"}),
    ],
)
def test_anthropic_adapter_translates_tool_choice(tool_choice: Any, sent: dict[str, str]) -> None:
    assert translate([{"role": "user", "content": "hi"}], tool_choice=tool_choice)["tool_choice"] == sent


def test_anthropic_adapter_sends_user_as_metadata_and_leaves_out_operational_hints() -> None:
    arguments = translate(
        [{"role": "user", "content": "hi"}],
        user="u-42",
        top_p=0.9,
        presence_penalty=0,
        logprobs=False,
        store=True,
        service_tier="auto",
        prompt_cache_key="k",
        response_format={"type": "text"},
        n=1,
    )
    assert arguments == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
        "top_p": 0.9,
        "metadata": {"user_id": "u-42"},
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 1}, "presence_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"response_format": {"type": "json_object"}, "tools": [TOOL]}, "response_format"),
        ({"reasoning_effort": "high", "max_tokens": 1000}, "max_tokens"),
        ({"reasoning_effort": "low", "temperature": 0.2}, "temperature"),
    ],
)
def test_what_would_change_the_answer_without_a_counterpart_is_unsupported_naming_it(
    params: dict[str, Any], param: str
) -> None:
    with pytest.raises(Unsupported) as refused:
        translate([{"role": "user", "content": "hi"}], **params)
    assert refused.value.param == param


def test_a_json_response_format_is_one_forced_tool_whose_input_is_the_answer() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    arguments = translate(
        [{"role": "user", "content": "where?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert arguments["tools"] == [
        {"name": "place", "description": "Give the answer as this tool's input.", "input_schema": schema}
    ]
    assert arguments["tool_choice"] == {"type": "tool", "name": "place"}

    forced = anthropic_message(
        content=[{"type": "tool_use", "id": "t", "name": "place", "input": {"city": "Oslo"}}],
        stop_reason="tool_use",
    )
    body = openai_body(forced, provider="claude", created_s=0, json_tool="place")
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ('{"city": "Oslo"}', "stop")
    assert "tool_calls" not in choice["message"]


def test_reasoning_effort_becomes_thinking_and_parallel_tool_calls_false_disables_it() -> None:
    arguments = translate(
        [{"role": "user", "content": "hi"}],
        reasoning_effort="medium",
        max_tokens=16000,
        tools=[TOOL],
        parallel_tool_calls=False,
    )
    assert arguments["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert arguments["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("messages", "params"),
    [
        ([{"role": "user", "content": "hi"}], {"n": 2}),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], {}),
        ([{"role": "function", "name": "f", "content": "x"}], {}),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}],
            {},
        ),
        ([{"role": "user", "content": "hi"}], {"tools": [{"type": "web_search"}]}),
    ],
    ids=["several-choices", "audio-part", "function-role", "invalid-tool-arguments", "non-function-tool"],
)
def test_anthropic_adapter_refuses_what_anthropic_cannot_express(
    messages: list[dict[str, Any]], params: dict[str, Any]
) -> None:
    with pytest.raises(BadRequest) as raised:
        translate(messages, **params)
    assert raised.value.provider == "claude"


# --- Anthropic message → OpenAI chat.completion ------------------------------------------------


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-20250101",
        "content": [{"type": "text", "text": "echo: "}, {"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 2},
    }
    return message | overrides


def test_anthropic_message_becomes_an_openai_chat_completion() -> None:
    body = openai_body(anthropic_message(), provider="claude", created_s=1_700_000_000)
    assert body == {
        "id": "chatcmpl-msg_01",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-x-20250101",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: hi", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_anthropic_tool_use_blocks_become_openai_tool_calls_without_content() -> None:
    message = anthropic_message(
        content=[{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}}],
        stop_reason="tool_use",
    )
    choice = openai_body(message, provider="claude", created_s=0)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "w", "arguments": json.dumps({"c": "Paris"})},
        }
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
def test_anthropic_stop_reasons_map_to_openai_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    body = openai_body(anthropic_message(stop_reason=stop_reason), provider="claude", created_s=0)
    assert body["choices"][0]["finish_reason"] == finish_reason


def test_anthropic_refusal_is_content_filtered() -> None:
    with pytest.raises(ContentFiltered):
        openai_body(anthropic_message(stop_reason="refusal"), provider="claude", created_s=0)


@pytest.mark.parametrize("stop_reason", ["pause_turn", None])
def test_anthropic_unfinished_turn_is_truncated(stop_reason: str | None) -> None:
    with pytest.raises(Truncated, match=str(stop_reason)):
        openai_body(anthropic_message(stop_reason=stop_reason), provider="claude", created_s=0)


def test_anthropic_cached_prompt_tokens_count_in_prompt_tokens_as_openai_counts_them() -> None:
    usage = {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 10,
    }
    body = openai_body(anthropic_message(usage=usage), provider="claude", created_s=0)
    assert body["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 2,
        "total_tokens": 117,
        # Cache writes beside OpenAI's cached_tokens: Anthropic prices them apart.
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 10},
    }


def test_anthropic_message_without_usage_is_truncated() -> None:
    body = openai_body(anthropic_message(usage=None), provider="claude", created_s=0)
    with pytest.raises(Truncated, match="usage"):
        completion_from_openai_body(body, provider="claude", model="claude-x")


# --- OpenAI body → Completion ------------------------------------------------------------------


def openai_completion_body(**choice: Any) -> dict[str, Any]:
    first = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"} | choice
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-x-2025",
        "choices": [first],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }


def test_completion_takes_usage_and_finish_reason_from_the_body_and_keeps_the_target_model() -> None:
    limits = RateLimitHeaders(remaining_requests=3)
    completion = completion_from_openai_body(
        openai_completion_body(), provider="oa", model="gpt-x", rate_limits=limits
    )
    assert (completion.input_tokens, completion.output_tokens) == (9, 1)
    assert (completion.finish_reason, completion.provider, completion.model) == ("stop", "oa", "gpt-x")
    assert completion.body["model"] == "gpt-x-2025"
    assert completion.rate_limits == limits


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "object": "chat.completion"},
        {"choices": []},
        openai_completion_body(finish_reason=None),
        openai_completion_body(finish_reason="cut_short"),
        {**openai_completion_body(), "usage": None},
        {**openai_completion_body(), "usage": {"prompt_tokens": 9}},
    ],
    ids=["no-choices", "empty-choices", "null-finish", "unknown-finish", "no-usage", "partial-usage"],
)
def test_openai_body_that_is_not_a_finished_answer_is_truncated(body: dict[str, Any]) -> None:
    with pytest.raises(Truncated):
        completion_from_openai_body(body, provider="oa", model="gpt-x")


def test_openai_content_filter_finish_is_content_filtered() -> None:
    with pytest.raises(ContentFiltered):
        completion_from_openai_body(
            openai_completion_body(finish_reason="content_filter"), provider="oa", model="m"
        )


# --- Rate-limit and retry-after headers --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("250us", 0.00025),
        ("0s", 0.0),
        ("2", 2.0),
    ],
)
def test_go_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_go_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "5 minutes", "-1s", "-3", "1x"])
def test_unreadable_go_durations_parse_to_none(text: str | None) -> None:
    assert parse_go_duration_s(text) is None


def test_openai_rate_limit_headers_are_read_into_rate_limits() -> None:
    headers = httpx2.Headers(
        {
            "X-RateLimit-Remaining-Requests": "4999",
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert openai_rate_limits(headers) == RateLimitHeaders(4999, 159976, 0.012, 360.0)
    assert openai_rate_limits(httpx2.Headers({"content-type": "application/json"})) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2025-10-25T12:00:30Z", 30.0),
        ("2025-10-25T14:01:00+02:00", 60.0),
        ("2025-10-25T12:00:00.5", 0.5),
        ("2025-10-25T11:59:00Z", 0.0),
        ("tomorrow", None),
        (None, None),
    ],
)
def test_rfc3339_resets_become_seconds_from_now_never_negative(
    text: str | None, seconds: float | None
) -> None:
    assert parse_reset_timestamp_s(text, NOW) == seconds


def test_anthropic_rate_limit_headers_are_read_into_rate_limits() -> None:
    headers = httpx2.Headers(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-tokens-remaining": "49500",
            "anthropic-ratelimit-requests-reset": "2025-10-25T12:00:10Z",
            "anthropic-ratelimit-tokens-reset": "2025-10-25T12:01:00Z",
        }
    )
    assert anthropic_rate_limits(headers, NOW) == RateLimitHeaders(0, 49500, 10.0, 60.0)
    assert anthropic_rate_limits(httpx2.Headers(), NOW) is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "300", "retry-after": "5"}, 0.3),
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "Sat, 25 Oct 2025 12:00:20 GMT"}, 20.0),
        ({"retry-after": "Sat, 25 Oct 2025 11:00:00 GMT"}, 0.0),
        ({"retry-after": "later"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_milliseconds_then_seconds_then_http_dates(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_s(httpx2.Headers(headers), NOW) == seconds


# --- SDK exceptions → named upstream errors, the same for both SDKs ----------------------------

REQUEST = httpx2.Request("POST", "http://upstream.test/v1/x")


def openai_status_error(status: int, body: dict[str, Any], headers: dict[str, str]) -> Exception:
    response = httpx2.Response(status, headers=headers, json={"error": body}, request=REQUEST)
    return openai.APIStatusError(
        f"Error code: {status} - {body.get('message')}", response=response, body=body
    )


def anthropic_status_error(status: int, body: dict[str, Any], headers: dict[str, str]) -> Exception:
    whole = {"type": "error", "error": body, "request_id": "req_1"}
    response = httpx2.Response(status, headers=headers, json=whole, request=REQUEST)
    return anthropic.APIStatusError(f"Error code: {status} - {whole}", response=response, body=whole)


SDKS = {
    "openai": (openai_status_error, OPENAI_SDK_ERRORS, openai.APITimeoutError, openai.APIConnectionError),
    "anthropic": (
        anthropic_status_error,
        ANTHROPIC_SDK_ERRORS,
        anthropic.APITimeoutError,
        anthropic.APIConnectionError,
    ),
}


@pytest.fixture(params=sorted(SDKS))
def sdk(request: pytest.FixtureRequest) -> tuple[Any, SdkErrorTypes, type[Exception], type[Exception]]:
    return SDKS[request.param]


def translated(exc: Exception, sdk_errors: SdkErrorTypes) -> UpstreamError:
    return translate_sdk_error(exc, sdk_errors, provider="up", now=NOW, timeout_s=1)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequest),
        (401, AuthFailed),
        (403, AuthFailed),
        (404, NotFoundUpstream),
        (408, UpstreamTimeout),
        (409, ServerError),
        (413, BadRequest),
        (422, BadRequest),
        (429, RateLimited),
        (500, ServerError),
        (502, ServerError),
        (503, Overloaded),
        (504, UpstreamTimeout),
        (529, Overloaded),
    ],
)
def test_each_http_status_becomes_its_named_error_in_jobgates_words(
    status: int, error_type: type[UpstreamError], sdk: Any
) -> None:
    make_status_error, sdk_errors, _, _ = sdk
    error = translated(
        make_status_error(status, {"type": "x", "message": "upstream says no"}, {}), sdk_errors
    )
    assert type(error) is error_type
    assert (error.status_code, error.provider) == (status, "up")
    assert error.message.startswith(f"up answered {status} (")
    assert "upstream says no" not in error.message


RATE_LIMIT_WORDS = {
    "message": "Rate limit reached for gpt-4o-mini in organization org-Xq8canary on requests per min"
    " (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.",
    "type": "requests",
    "code": "rate_limit_exceeded",
}


def test_a_429_names_the_status_and_request_id_but_never_the_organisation(sdk: Any) -> None:
    make_status_error, sdk_errors, _, _ = sdk
    headers = {"x-request-id": "req_abc", "request-id": "req_abc", "retry-after-ms": "120"}

    error = translated(make_status_error(429, RATE_LIMIT_WORDS, headers), sdk_errors)

    assert error.message == "up answered 429 (rate limited), request id req_abc"
    assert error.to_error() == {"type": "rate_limited", "message": error.message}
    assert (error.request_id, error.upstream_code, error.retry_after_s) == (
        "req_abc",
        "requests/rate_limit_exceeded",
        0.12,
    )


def test_a_request_id_that_is_not_an_identifier_is_left_out() -> None:
    exc = openai_status_error(500, {"message": "boom"}, {"x-request-id": "req 1; internal-lb-7.corp"})
    error = translated(exc, OPENAI_SDK_ERRORS)
    assert (error.message, error.request_id) == ("up answered 500 (server error)", None)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_do_not_pass_the_providers_words_to_the_tenant(status: int, sdk: Any) -> None:
    make_status_error, sdk_errors, _, _ = sdk
    words = {"type": "invalid_api_key", "message": "Incorrect API key provided: sk-proj-****abcd"}

    error = translated(make_status_error(status, words, {}), sdk_errors)

    assert "abcd" not in error.message
    assert error.message.startswith(
        f"up answered {status} (the gateway's credentials were refused; an operator must check them)"
    )


def test_a_bad_request_keeps_the_param_the_provider_names_but_not_its_words() -> None:
    words = {
        "message": "Invalid value for 'temperature': 7 is above the maximum of 2 for org-Xq8canary.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
    error = translated(openai_status_error(400, words, {"x-request-id": "req_9"}), OPENAI_SDK_ERRORS)
    assert error.to_error() == {
        "type": "bad_request",
        "message": "up answered 400 (bad request, param 'temperature'), request id req_9",
        "param": "temperature",
    }


def test_a_param_that_is_free_text_is_not_repeated() -> None:
    words = {"message": "no", "type": "invalid_request_error", "param": "see org-Xq8canary's settings"}
    error = translated(openai_status_error(400, words, {}), OPENAI_SDK_ERRORS)
    assert (error.param, "org-" in error.message) == (None, False)


@pytest.mark.parametrize("status", [429, 503, 529])
def test_rate_limited_and_overloaded_errors_carry_retry_after(status: int, sdk: Any) -> None:
    make_status_error, sdk_errors, _, _ = sdk
    error = translated(make_status_error(status, {"message": "slow down"}, {"retry-after": "7"}), sdk_errors)
    assert error.retry_after_s == 7.0


@pytest.mark.parametrize(
    "body",
    [
        {"message": "flagged", "type": "invalid_request_error", "code": "content_policy_violation"},
        {"message": "flagged", "type": "invalid_request_error", "code": "content_filter"},
        {
            "message": "flagged",
            "type": "invalid_request_error",
            "details": {"error_code": "content_filter_blocked"},
        },
    ],
)
def test_a_400_about_content_policy_is_content_filtered(body: dict[str, Any], sdk: Any) -> None:
    make_status_error, sdk_errors, _, _ = sdk
    error = translated(make_status_error(400, body, {}), sdk_errors)
    assert isinstance(error, ContentFiltered)
    assert "flagged" not in error.message


def test_sdk_timeout_becomes_upstream_timeout(sdk: Any) -> None:
    _, sdk_errors, timeout_error, _ = sdk
    error = translated(timeout_error(request=REQUEST), sdk_errors)
    assert isinstance(error, UpstreamTimeout)
    assert error.provider == "up"


@pytest.mark.parametrize(
    ("os_error", "reason"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('10.20.30.40', 8443)"), "connection refused"),
        (
            socket.gaierror(-2, "Name or service not known: llm.internal.corp"),
            "the host name did not resolve",
        ),
    ],
    ids=["refused", "no-such-host"],
)
def test_a_failed_connect_says_why_without_naming_the_host(os_error: OSError, reason: str, sdk: Any) -> None:
    _, sdk_errors, timeout_error, _ = sdk
    # What the SDKs' aiohttp transport raises: a connect "timeout" caused by the OS's error.
    exc = timeout_error(request=REQUEST)
    exc.__cause__ = httpx2.ConnectTimeout(f"Cannot connect to host llm.internal.corp:8443 [{os_error}]")
    exc.__cause__.__cause__ = os_error
    error = translated(exc, sdk_errors)
    assert isinstance(error, ConnectionFailed)
    assert error.message == f"cannot reach up: {reason}"


def test_a_lost_connection_is_connection_failed_naming_only_the_error_class(sdk: Any) -> None:
    _, sdk_errors, _, connection_error = sdk
    exc = connection_error(request=REQUEST)
    exc.__cause__ = httpx2.RemoteProtocolError("Server disconnected: 10.20.30.40")
    error = translated(exc, sdk_errors)
    assert isinstance(error, ConnectionFailed)
    assert error.message == "the connection to up failed (RemoteProtocolError)"


def test_a_non_json_error_body_does_not_reach_the_message() -> None:
    response = httpx2.Response(502, text="Bad Gateway from lb-7.internal.corp", request=REQUEST)
    exc = openai.APIStatusError(
        "Error code: 502", response=response, body="Bad Gateway from lb-7.internal.corp"
    )
    error = translated(exc, OPENAI_SDK_ERRORS)
    assert (type(error), error.message) == (ServerError, "up answered 502 (server error)")


def test_an_error_event_in_a_stream_is_a_server_error_without_its_words() -> None:
    exc = openai.APIError("quota of org-Xq8canary exhausted", request=REQUEST, body=None)
    error = translated(exc, OPENAI_SDK_ERRORS)
    assert (type(error), error.message) == (ServerError, "up failed (APIError)")


# --- Registry ----------------------------------------------------------------------------------


async def test_build_providers_makes_one_adapter_per_configured_provider_by_kind() -> None:
    providers = build_providers(GatewayConfig.model_validate(dev_config_dict("http://127.0.0.1:9")))
    try:
        assert isinstance(providers["sim-openai"], OpenAIProvider)
        assert isinstance(providers["sim-anthropic"], AnthropicProvider)
        assert {name: p.name for name, p in providers.items()} == {n: n for n in providers}
    finally:
        await close_providers(providers)


def test_build_providers_fails_naming_an_unset_api_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBGATE_TEST_UNSET_KEY", raising=False)
    config = GatewayConfig.model_validate(
        {"providers": {"oa": {"kind": "openai", "api_key_env": "JOBGATE_TEST_UNSET_KEY"}}}
    )
    with pytest.raises(ConfigError, match="JOBGATE_TEST_UNSET_KEY"):
        build_providers(config)
