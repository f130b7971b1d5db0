"""The simulated upstream, run as a real process and driven by the official OpenAI and Anthropic SDKs."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import anthropic
import httpx
import openai
import pytest

from sim.tokens import count_tokens, prompt_tokens
from tests.sim_process import SimHandle, run_sim


@pytest.fixture(scope="module")
def sim_process() -> Iterator[SimHandle]:
    with run_sim() as handle:
        yield handle


@pytest.fixture
def sim(sim_process: SimHandle) -> SimHandle:
    sim_process.reset(config=True)
    return sim_process


def openai_client(sim: SimHandle, api_key: str = "k", timeout_s: float = 10) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.openai_base_url, api_key=api_key, max_retries=0, timeout=timeout_s)


def anthropic_client(sim: SimHandle, api_key: str = "k") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key=api_key, max_retries=0, timeout=10)


def ask_openai(client: openai.OpenAI, text: str, model: str = "gpt-sim", **options: object):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **options
    )


def ask_anthropic(client: anthropic.Anthropic, text: str, model: str = "claude-sim", **options: object):
    options.setdefault("max_tokens", 100)
    return client.messages.create(model=model, messages=[{"role": "user", "content": text}], **options)


def test_openai_sdk_gets_echo_answer_with_usage(sim: SimHandle) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "echo: first question"},
        {"role": "user", "content": "hello there, simulator"},
    ]
    completion = openai_client(sim).chat.completions.create(model="gpt-4o-mini", messages=messages)

    answer = "echo: hello there, simulator"
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == answer
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (
        completion.usage.prompt_tokens
        == prompt_tokens(messages)
        == sum(4 + count_tokens(m["content"]) for m in messages)
    )
    assert completion.usage.completion_tokens == count_tokens(answer) == math.ceil(len(answer) / 4)
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion._request_id and completion._request_id.startswith("req_")


def test_anthropic_sdk_gets_echo_answer_with_usage_counting_the_system_prompt(sim: SimHandle) -> None:
    messages = [{"role": "user", "content": "what is the answer?"}]
    message = anthropic_client(sim).messages.create(
        model="claude-haiku-4-5", max_tokens=100, system="Be brief.", messages=messages
    )

    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-haiku-4-5"
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: what is the answer?"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == prompt_tokens(messages, "Be brief.") == (4 + 5) + (4 + 3)
    assert message.usage.output_tokens == count_tokens("echo: what is the answer?")
    assert message._request_id and message._request_id.startswith("req_")


def test_content_given_as_parts_is_joined_for_the_echo(sim: SimHandle) -> None:
    parts = [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]
    completion = openai_client(sim).chat.completions.create(
        model="m", messages=[{"role": "user", "content": parts}]
    )
    message = anthropic_client(sim).messages.create(
        model="m",
        max_tokens=50,
        system=[{"type": "text", "text": "sys"}],
        messages=[{"role": "user", "content": parts}],
    )

    assert completion.choices[0].message.content == "echo: part one, part two"
    assert completion.usage is not None and completion.usage.prompt_tokens == 4 + count_tokens(
        "part one, part two"
    )
    assert message.content[0].text == "echo: part one, part two"
    assert message.usage.input_tokens == (4 + count_tokens("part one, part two")) + (4 + 1)


def test_openai_answer_is_cut_to_max_tokens_with_finish_reason_length(sim: SimHandle) -> None:
    client = openai_client(sim)
    text = "a fairly long question that will not fit"

    completion = ask_openai(client, text, max_tokens=3)
    newer = ask_openai(client, text, max_completion_tokens=2)

    assert completion.choices[0].message.content == ("echo: " + text)[:12]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert newer.choices[0].message.content == ("echo: " + text)[:8]
    assert newer.choices[0].finish_reason == "length"


def test_anthropic_answer_is_cut_to_max_tokens_with_stop_reason_max_tokens(sim: SimHandle) -> None:
    message = ask_anthropic(anthropic_client(sim), "a fairly long question", max_tokens=2)

    assert message.content[0].text == "echo: a "
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_openai_stop_sequence_cuts_the_answer_at_its_first_match(sim: SimHandle) -> None:
    client = openai_client(sim)

    listed = ask_openai(client, "one, two. three", stop=[".", ","])
    single = ask_openai(client, "one, two. three", stop="two")

    assert listed.choices[0].message.content == "echo: one"
    assert listed.choices[0].finish_reason == "stop"
    assert listed.usage is not None and listed.usage.completion_tokens == count_tokens("echo: one")
    assert single.choices[0].message.content == "echo: one, "


def test_anthropic_stop_sequence_cuts_the_answer_and_is_reported(sim: SimHandle) -> None:
    message = ask_anthropic(anthropic_client(sim), "alpha END beta", stop_sequences=["zzz", "END"])

    assert message.content[0].text == "echo: alpha "
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "END"


def test_openai_tool_call_goes_to_the_first_tool_with_the_rest_of_the_message(sim: SimHandle) -> None:
    tools = [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    completion = ask_openai(openai_client(sim), "call_tool: weather in Paris", tools=tools)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"input": "weather in Paris"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == count_tokens(call.function.arguments)


def test_anthropic_tool_use_block_goes_to_the_first_tool(sim: SimHandle) -> None:
    tools = [{"name": "lookup", "description": "look up", "input_schema": {"type": "object"}}]
    message = ask_anthropic(anthropic_client(sim), "call_tool:weather", tools=tools)
    without_tools = ask_anthropic(anthropic_client(sim), "call_tool:weather")

    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "lookup"
    assert block.input == {"input": "weather"}
    assert without_tools.content[0].text == "echo: call_tool:weather"


def test_missing_api_key_is_refused_with_401_in_each_provider_shape(sim: SimHandle) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=sim.url) as http:
        openai_answer = http.post("/v1/chat/completions", json=body)
        anthropic_answer = http.post("/v1/messages", json=body)
        legacy_key = http.post(
            "/v1/messages", json=body, headers={"x-api-key": "k", "anthropic-version": "x"}
        )

    assert openai_answer.status_code == 401
    assert openai_answer.json()["error"]["type"] == "invalid_request_error"
    assert set(openai_answer.json()["error"]) == {"message", "type", "param", "code"}
    assert anthropic_answer.status_code == 401
    assert anthropic_answer.json()["type"] == "error"
    assert anthropic_answer.json()["error"]["type"] == "authentication_error"
    assert anthropic_answer.json()["request_id"] == anthropic_answer.headers["request-id"]
    assert legacy_key.status_code == 200


def test_invalid_requests_are_refused_with_400_naming_the_field(sim: SimHandle) -> None:
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        anthropic_client(sim).messages.create(model="m", max_tokens=5, messages=[])
    with pytest.raises(openai.BadRequestError) as openai_error:
        openai_client(sim).chat.completions.create(model="m", messages=[])
    with httpx.Client(base_url=sim.url, headers={"x-api-key": "k"}) as http:
        no_max_tokens = http.post(
            "/v1/messages", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        not_json = http.post("/v1/messages", content=b"{oops")

    assert anthropic_error.value.type == "invalid_request_error"
    assert "messages" in anthropic_error.value.message
    assert openai_error.value.param == "messages"
    assert no_max_tokens.status_code == 400 and "max_tokens" in no_max_tokens.json()["error"]["message"]
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"


def test_forced_429_raises_rate_limit_error_with_retry_after(sim: SimHandle) -> None:
    sim.configure(retry_after_s=2)
    with pytest.raises(openai.RateLimitError) as error:
        ask_openai(openai_client(sim), "hi", extra_headers={"x-sim-fail-status": "429"})

    assert error.value.response.headers["retry-after"] == "2"
    assert error.value.response.headers["retry-after-ms"] == "2000"
    assert error.value.code == "rate_limit_exceeded"
    assert sim.stats()["injected_failures"] == {"429": 1}
    assert sim.stats()["rate_limited"] == 0


def test_fail_rate_applies_only_to_the_configured_model(sim: SimHandle) -> None:
    sim.configure(models={"broken": {"fail_rate": 1.0, "fail_status": 500}})
    client = openai_client(sim)

    with pytest.raises(openai.InternalServerError) as error:
        ask_openai(client, "hi", model="broken")
    healthy = ask_openai(client, "hi", model="healthy")

    assert error.value.status_code == 500
    assert error.value.type == "server_error"
    assert healthy.choices[0].message.content == "echo: hi"
    assert sim.stats()["models"]["broken"]["injected_failures"] == {"500": 1}


def test_anthropic_529_raises_overloaded_error(sim: SimHandle) -> None:
    sim.configure(fail_rate=1, fail_status=529)
    with pytest.raises(anthropic.OverloadedError) as error:
        ask_anthropic(anthropic_client(sim), "hi")

    assert error.value.status_code == 529
    assert error.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": error.value.request_id,
    }
    assert error.value.response.headers["retry-after"] == "1"


def test_timeout_failure_closes_the_connection_without_an_answer(sim: SimHandle) -> None:
    sim.configure(models={"slow": {"fail_rate": 1, "fail_status": "timeout", "hang_s": 0.3}})
    started = time.monotonic()

    with pytest.raises(openai.APIConnectionError):
        ask_openai(openai_client(sim), "hi", model="slow")

    assert time.monotonic() - started >= 0.3
    stats = sim.wait_for_stats(lambda s: s["in_flight"] == 0)
    assert stats["injected_failures"] == {"timeout": 1}
    assert sim.calls("slow")[0]["status"] == 0


def test_client_timeout_fires_while_the_sim_hangs(sim: SimHandle) -> None:
    sim.configure(fail_rate=1, fail_status="timeout", hang_s=5)

    with pytest.raises(openai.APITimeoutError):
        ask_openai(openai_client(sim, timeout_s=0.2), "hi")

    sim.wait_for_stats(lambda s: s["in_flight"] == 0)


def test_rpm_is_enforced_per_second_as_one_seconds_share(sim: SimHandle) -> None:
    sim.configure(rpm=600)
    client = openai_client(sim)
    outcomes: list[str | openai.RateLimitError] = []
    started = time.monotonic()
    for _ in range(30):
        try:
            ask_openai(client, "hi")
            outcomes.append("ok")
        except openai.RateLimitError as error:
            outcomes.append(error)
    refilled = math.ceil((time.monotonic() - started) * 10)  # the bucket refills 10 requests a second

    refused = [o for o in outcomes if o != "ok"]
    assert refused
    assert 10 <= outcomes.count("ok") <= 10 + refilled
    assert outcomes[:10] == ["ok"] * 10
    first = refused[0]
    assert isinstance(first, openai.RateLimitError)
    assert first.type == "requests" and first.code == "rate_limit_exceeded"
    assert first.response.headers["retry-after"] == "1"
    assert 0 < int(first.response.headers["retry-after-ms"]) <= 100
    assert first.response.headers["x-ratelimit-limit-requests"] == "600"
    assert sim.stats()["rate_limited"] == len(refused)
    assert sim.stats()["models"]["gpt-sim"]["rate_limited"] == len(refused)


def test_rpm_buckets_are_separate_per_api_key_and_per_model(sim: SimHandle) -> None:
    sim.configure(rpm=60)
    first_key, second_key = openai_client(sim, "key-1"), openai_client(sim, "key-2")

    ask_openai(first_key, "hi", model="a")
    with pytest.raises(openai.RateLimitError):
        ask_openai(first_key, "hi", model="a")
    ask_openai(first_key, "hi", model="b")
    ask_openai(second_key, "hi", model="a")

    by_key = sim.stats()["by_key"]
    assert by_key["key-1"]["calls"] == 2 and by_key["key-1"]["rate_limited"] == 1
    assert by_key["key-2"]["calls"] == 1


def test_tpm_counts_prompt_tokens_plus_max_tokens(sim: SimHandle) -> None:
    sim.configure(tpm=6000)  # a bucket of 100 tokens, refilled at 100 per second
    client = anthropic_client(sim)

    ask_anthropic(client, "hi", max_tokens=60)  # costs 4 + 1 + 60 = 65
    with pytest.raises(anthropic.RateLimitError) as error:
        ask_anthropic(client, "hi", max_tokens=60)

    assert error.value.type == "rate_limit_error"
    assert "6000 tokens per minute" in error.value.message
    assert int(error.value.response.headers["retry-after-ms"]) > 200
    assert error.value.response.headers["anthropic-ratelimit-tokens-limit"] == "6000"


def test_rate_limit_headers_report_the_budget_in_per_minute_terms(sim: SimHandle) -> None:
    sim.configure(rpm=120, tpm=60_000)
    openai_raw = openai_client(sim).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=10
    )
    anthropic_raw = anthropic_client(sim).messages.with_raw_response.create(
        model="m2", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )

    headers = openai_raw.headers
    assert headers["x-ratelimit-limit-requests"] == "120"
    assert headers["x-ratelimit-remaining-requests"] == "60"  # half of the 2-request bucket left
    assert headers["x-ratelimit-reset-requests"] in ("500ms", "499ms", "501ms")
    assert headers["x-ratelimit-limit-tokens"] == "60000"
    assert int(headers["x-ratelimit-remaining-tokens"]) == (1000 - (5 + 10)) * 60
    assert headers["x-ratelimit-reset-tokens"].endswith("ms")
    reset_at = datetime.fromisoformat(anthropic_raw.headers["anthropic-ratelimit-requests-reset"])
    assert 0 <= (reset_at - datetime.now(UTC)).total_seconds() <= 2
    assert anthropic_raw.headers["anthropic-ratelimit-requests-remaining"] == "60"


def test_unlimited_models_get_no_rate_limit_headers(sim: SimHandle) -> None:
    raw = openai_client(sim).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )

    assert "x-ratelimit-limit-requests" not in raw.headers
    assert raw.headers["x-request-id"].startswith("req_")


def test_config_merges_per_model_overrides_over_global_knobs(sim: SimHandle) -> None:
    sim.configure(latency_ms=5, models={"a": {"rpm": 60, "latency_ms": 0}})
    config = sim.configure(models={"a": {"fail_rate": 0.5}, "b": {"tpm": 1000}})

    assert config["latency_ms"] == 5
    assert config["models"] == {"a": {"rpm": 60, "latency_ms": 0, "fail_rate": 0.5}, "b": {"tpm": 1000}}
    assert sim.configure(models={"a": None})["models"] == {"b": {"tpm": 1000}}
    assert sim.config() == sim.configure()


def test_invalid_config_is_refused_and_changes_nothing(sim: SimHandle) -> None:
    before = sim.config()
    with httpx.Client(base_url=sim.url) as http:
        bad_value = http.post("/sim/config", json={"latency_ms": 3, "fail_rate": 2})
        bad_name = http.post("/sim/config", json={"models": {"a": {"latncy_ms": 3}}})

    assert bad_value.status_code == 400 and "fail_rate" in bad_value.json()["error"]["message"]
    assert bad_name.status_code == 400 and "latncy_ms" in bad_name.json()["error"]["message"]
    assert sim.config() == before


def test_stats_count_calls_and_tokens_and_reset_zeroes_them(sim: SimHandle) -> None:
    completion = ask_openai(openai_client(sim), "count me")
    message = ask_anthropic(anthropic_client(sim), "me too", model="claude-x")

    stats = sim.stats()
    assert completion.usage is not None
    assert stats["requests"] == 2 and stats["calls"] == 2
    assert stats["input_tokens"] == completion.usage.prompt_tokens + message.usage.input_tokens
    assert stats["output_tokens"] == completion.usage.completion_tokens + message.usage.output_tokens
    assert stats["models"]["claude-x"] == {
        "requests": 1,
        "calls": 1,
        "rate_limited": 0,
        "input_tokens": message.usage.input_tokens,
        "output_tokens": message.usage.output_tokens,
        "injected_failures": {},
    }
    assert stats["first_call_at"] <= stats["last_call_at"] <= time.time()

    sim.reset()
    zeroed = sim.stats()
    assert zeroed["requests"] == zeroed["calls"] == zeroed["input_tokens"] == 0
    assert zeroed["models"] == {} and zeroed["first_call_at"] is None
    assert sim.calls() == []


def test_calls_endpoint_lists_arrival_and_end_times_and_statuses_per_model(sim: SimHandle) -> None:
    client = openai_client(sim)
    before = time.time()
    ask_openai(client, "one", model="watched")
    with pytest.raises(openai.InternalServerError):
        ask_openai(client, "two", model="watched", extra_headers={"x-sim-fail-status": "500"})
    ask_openai(client, "three", model="other", extra_headers={"x-sim-latency-ms": "300"})

    [slow] = sim.calls("other")
    # asyncio runs a timer up to its clock's resolution early (seen: 0.29993 s for 300 ms).
    assert slow["end"] - slow["t"] >= 0.3 - 0.001
    calls = sim.calls("watched")
    assert [call["status"] for call in calls] == [200, 500]
    assert all(before <= call["t"] <= call["end"] <= time.time() for call in calls)
    assert sim.calls("watched", since=calls[1]["t"]) == [calls[1]]
    assert [call["model"] for call in sim.calls()] == ["watched", "watched", "other"]


def test_latency_header_delays_one_request(sim: SimHandle) -> None:
    client = openai_client(sim)
    started = time.monotonic()
    ask_openai(client, "hi", extra_headers={"x-sim-latency-ms": "200"})
    slow_s = time.monotonic() - started

    assert slow_s >= 0.2


def test_concurrent_requests_overlap_during_latency(sim: SimHandle) -> None:
    # 1 s per request: long enough that all 50 are started before the first ends on a busy machine.
    sim.configure(latency_ms=1000)
    client = openai_client(sim)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda i: ask_openai(client, f"q{i}"), range(50)))
    elapsed_s = time.monotonic() - started

    assert [a.choices[0].message.content for a in answers] == [f"echo: q{i}" for i in range(50)]
    stats = sim.stats()
    assert stats["max_in_flight"] == 50
    assert stats["in_flight"] == 0
    assert elapsed_s < 10 * 1.0  # overlapping, not 50 * 1.0 in a row


def test_start_up_flags_become_the_initial_config() -> None:
    with run_sim(rpm=600, tpm=100_000, latency_ms=1, fail_rate=0.25, fail_status="timeout", hang_s=2) as sim:
        config = sim.config()
        sim.configure(rpm=1, models={"m": {"latency_ms": 9}})
        sim.reset(config=True)
        restored = sim.config()

    assert config["rpm"] == 600 and config["tpm"] == 100_000 and config["latency_ms"] == 1
    assert config["fail_rate"] == 0.25 and config["fail_status"] == "timeout" and config["hang_s"] == 2
    assert restored == config


def test_both_dialects_stream_as_the_sdks_read_it_with_a_delay_between_tokens(sim: SimHandle) -> None:
    sim.configure(models={"streamed": {"stream_delay_ms": 20}})
    chunks = list(
        openai_client(sim).chat.completions.create(
            model="streamed",
            messages=[{"role": "user", "content": "a streamed answer"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a streamed answer"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    started = time.monotonic()
    with anthropic_client(sim).messages.stream(
        model="streamed", max_tokens=64, messages=[{"role": "user", "content": "token by token"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text == "echo: token by token"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert time.monotonic() - started >= 0.02 * (len(streamed) // 4 - 1)
