"""The sim's Azure OpenAI and Gemini dialects: routing, keys, and their answers' and errors' shapes."""

from __future__ import annotations

import pytest

from sim.answer import compose_answer
from sim.azure_api import AzureDialect, azure_dialect
from sim.gemini_api import GeminiDialect
from sim.limits import RateLimiter
from sim.wire import SimError

HELLO = {"messages": [{"role": "user", "content": "hi"}]}


def test_a_deployment_path_is_routed_to_azure_with_its_deployment_and_api_version() -> None:
    dialect = azure_dialect("/openai/deployments/prod-4o/chat/completions", b"api-version=2024-10-21")

    assert dialect is not None
    assert (dialect.deployment, dialect.api_version) == ("prod-4o", "2024-10-21")
    assert azure_dialect("/openai/deployments/prod-4o/embeddings", b"api-version=1") is None
    assert azure_dialect("/v1/chat/completions", b"") is None


def test_the_deployment_is_the_model_whatever_the_body_names() -> None:
    request = AzureDialect("prod-4o", "2024-10-21").parse({**HELLO, "model": "something-else"})
    assert request.model == "prod-4o"
    assert AzureDialect("prod-4o", "v").parse(HELLO).model == "prod-4o"  # no model in the body is fine


def test_azure_without_an_api_version_is_not_found() -> None:
    dialect = AzureDialect("prod-4o", None)
    with pytest.raises(SimError) as raised:
        dialect.parse(HELLO)
    assert raised.value.status == 404
    assert dialect.error_body(raised.value, None, "req_1") == {
        "error": {"code": "404", "message": "Resource not found"}
    }


def test_azure_takes_the_key_from_api_key_or_an_entra_id_bearer_token() -> None:
    dialect = AzureDialect("d", "v")
    assert dialect.api_key({"api-key": "k1"}) == "k1"
    assert dialect.api_key({"authorization": "Bearer token-1"}) == "token-1"
    assert dialect.api_key({}) is None


def test_azure_refuses_a_filtered_prompt_with_its_content_filter_error() -> None:
    dialect = AzureDialect("d", "v")
    with pytest.raises(SimError) as raised:
        dialect.parse({"messages": [{"role": "user", "content": "filter_prompt: x"}]})

    error = dialect.error_body(raised.value, None, "req_1")["error"]
    assert (raised.value.status, error["code"], error["param"]) == (400, "content_filter", "prompt")
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"


def test_azure_stops_a_filtered_answer_with_finish_reason_content_filter() -> None:
    dialect = AzureDialect("d", "v")
    request = dialect.parse({"messages": [{"role": "user", "content": "filter_answer: x"}]})
    body = dialect.success_body(request, compose_answer(request.user_text), "req_1")

    [choice] = body["choices"]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", None)
    assert choice["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}
    assert body["prompt_filter_results"][0]["prompt_index"] == 0


def test_azures_429_names_the_wait_and_the_resource_as_azure_does() -> None:
    body = AzureDialect("d", "2024-10-21").error_body(
        SimError(429, retry_after_s=6), None, "r", organization="org-X"
    )
    assert body["error"]["code"] == "429"
    assert "API version 2024-10-21" in body["error"]["message"]
    assert "org-X" in body["error"]["message"] and "retry after 6 seconds" in body["error"]["message"]


def test_gemini_answers_are_openais_without_the_fields_google_leaves_out() -> None:
    dialect = GeminiDialect()
    request = dialect.parse({**HELLO, "model": "gemini-2.5-flash"})
    body = dialect.success_body(request, compose_answer(request.user_text), "req_1")

    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi"}
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_gemini_sends_no_rate_limit_or_retry_after_headers() -> None:
    limiter = RateLimiter(clock=lambda: 0.0)
    limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1)
    verdict = limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1)
    assert not GeminiDialect.retry_after_header
    assert GeminiDialect().limit_headers(verdict) == []


def test_geminis_429_is_a_list_of_one_rpc_status_with_the_retry_delay_in_its_details() -> None:
    limiter = RateLimiter(clock=lambda: 0.0)
    limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1)
    verdict = limiter.admit("k", "m", rpm=60, tpm=None, cost_tokens=1)
    request = GeminiDialect().parse({**HELLO, "model": "m"})

    [entry] = GeminiDialect().error_body(SimError(429, limit=verdict, retry_after_s=1.2), request, "r")

    error = entry["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    types = [detail["@type"].rsplit(".", 1)[1] for detail in error["details"]]
    assert types == ["QuotaFailure", "Help", "RetryInfo"]
    assert error["details"][-1]["retryDelay"] == "2s"  # whole seconds, rounded up
    assert error["details"][0]["violations"][0]["quotaValue"] == "60"


@pytest.mark.parametrize(
    ("status", "name"), [(400, "INVALID_ARGUMENT"), (500, "INTERNAL"), (503, "UNAVAILABLE")]
)
def test_geminis_other_errors_carry_their_rpc_status_names(status: int, name: str) -> None:
    [entry] = GeminiDialect().error_body(SimError(status), None, "r")
    assert (entry["error"]["code"], entry["error"]["status"]) == (status, name)
    assert "details" not in entry["error"]
