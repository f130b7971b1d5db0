"""The two wire formats' parsing, bodies and rate-limit header values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sim.answer import compose_answer
from sim.anthropic_api import AnthropicDialect, rfc3339_after
from sim.limits import LimitVerdict, RateLimiter
from sim.openai_api import OpenAIDialect, go_duration
from sim.wire import SimError


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.012, "12ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (360, "6m0s"),
        (61.5, "1m1.5s"),
        (3723, "1h2m3s"),
    ],
)
def test_durations_are_printed_the_way_go_prints_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_reset_times_are_rfc3339_rounded_up_to_the_second() -> None:
    reset = datetime.fromisoformat(rfc3339_after(0.2))

    assert reset.tzinfo is not None and reset.microsecond == 0
    assert 0 <= (reset - datetime.now(UTC)).total_seconds() <= 1.2


def test_openai_reads_max_completion_tokens_before_max_tokens_and_a_single_stop_string() -> None:
    request = OpenAIDialect().parse(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "max_completion_tokens": 7,
            "stop": "x",
        }
    )

    assert (request.max_tokens, request.stop, request.tool_name) == (7, ("x",), None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools"),
    ],
)
def test_openai_refuses_a_bad_request_naming_the_parameter(body: dict, param: str) -> None:
    with pytest.raises(SimError) as error:
        OpenAIDialect().parse(body)

    assert error.value.status == 400 and error.value.param == param


def test_anthropic_takes_the_key_from_x_api_key_or_bearer() -> None:
    dialect = AnthropicDialect()

    assert dialect.api_key({"x-api-key": "a"}) == "a"
    assert dialect.api_key({"authorization": "Bearer b"}) == "b"
    assert dialect.api_key({"authorization": "Basic c"}) is None
    assert OpenAIDialect().api_key({"x-api-key": "a"}) is None


def test_openai_rate_limit_error_names_the_exhausted_budget() -> None:
    limiter = RateLimiter(clock=lambda: 0.0)
    limiter.admit("k", "m", rpm=None, tpm=600, cost_tokens=10)
    verdict = limiter.admit("k", "m", rpm=None, tpm=600, cost_tokens=5)
    request = OpenAIDialect().parse({"model": "m", "messages": [{"role": "user", "content": "x"}]})

    body = OpenAIDialect().error_body(SimError(429, limit=verdict), request, "req_1")

    assert body["error"]["type"] == "tokens" and body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["message"].startswith(
        "Rate limit reached for m in organization org-sim on tokens per min"
    )
    assert "Requested 5. Please try again in 500ms." in body["error"]["message"]


def test_every_429_names_the_organization_as_the_providers_do() -> None:
    limiter = RateLimiter(clock=lambda: 0.0)
    limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1)
    limited = SimError(429, limit=limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1))
    request = OpenAIDialect().parse({"model": "m", "messages": [{"role": "user", "content": "x"}]})

    messages = [
        dialect.error_body(error, request, "req_1", organization="org-Zy9")
        for dialect in (OpenAIDialect(), AnthropicDialect())
        for error in (limited, SimError(429))
    ]

    texts = [body["error"]["message"] for body in messages]
    assert texts[0].startswith("Rate limit reached for m in organization org-Zy9 on requests per min")
    assert texts[1].startswith("Rate limit reached for m in organization org-Zy9 on requests per min")
    assert texts[2].startswith("This request would exceed the rate limit for your organization (org-Zy9)")
    assert texts[3].startswith("This request would exceed the rate limit for your organization (org-Zy9)")


def test_error_bodies_follow_each_provider_for_server_failures() -> None:
    openai_body = OpenAIDialect().error_body(SimError(503), None, "req_1")
    anthropic_body = AnthropicDialect().error_body(SimError(500), None, "req_2")

    assert openai_body == {
        "error": {
            "message": "The server is overloaded or not ready yet.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert anthropic_body == {
        "type": "error",
        "error": {"type": "api_error", "message": "Internal server error"},
        "request_id": "req_2",
    }


def test_limit_headers_appear_only_for_the_limited_budgets() -> None:
    verdict = RateLimiter(clock=lambda: 0.0).admit("k", "m", rpm=60, tpm=None, cost_tokens=1)

    headers = dict(OpenAIDialect().limit_headers(verdict))

    assert headers == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"1s",
    }
    assert OpenAIDialect().limit_headers(LimitVerdict(admitted=True)) == []


def test_anthropic_reports_a_tool_call_as_a_tool_use_block() -> None:
    dialect = AnthropicDialect()
    request = dialect.parse(
        {
            "model": "c",
            "max_tokens": 10,
            "system": "s",
            "tools": [{"name": "t", "input_schema": {}}],
            "messages": [{"role": "user", "content": "call_tool:go"}],
        }
    )

    body = dialect.success_body(request, compose_answer(request.user_text, tool_name=request.tool_name), "r")

    assert body["stop_reason"] == "tool_use"
    assert body["content"][0]["name"] == "t" and body["content"][0]["input"] == {"input": "go"}
    assert body["usage"]["input_tokens"] == (4 + 3) + (4 + 1)
