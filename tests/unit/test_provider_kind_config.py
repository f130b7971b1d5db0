"""The `azure` and `gemini` kinds' pure parts: their config rules, the deployment each Azure
model is served from, and how Gemini's Google RPC error bodies become named errors."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from core.config import parse_config
from core.errors import AuthFailed, BadRequest, ConfigError, Overloaded, RateLimited
from core.providers import build_providers, close_providers
from core.providers.azure import AzureProvider, azure_deployments
from core.providers.gemini import DEFAULT_BASE_URL, GeminiProvider, gemini_error

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
AZURE = {"kind": "azure", "endpoint": "https://res.openai.azure.com", "api_version": "2024-10-21"}
PRICE = {"input_per_mtok": 1, "output_per_mtok": 2}


def config_with(providers: dict[str, Any], targets: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    models = {target["model"] for target in targets}
    return {
        "providers": providers,
        "models": {"alias": {"targets": targets}},
        "pricing": {model: PRICE for model in models},
        **more,
    }


# --- Config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("azure", "message"),
    [
        (
            {"kind": "azure", "api_version": "2024-10-21"},
            "providers.az: Value error, kind azure needs endpoint",
        ),
        (
            {"kind": "azure", "endpoint": "https://r"},
            "providers.az: Value error, kind azure needs api_version",
        ),
        ({**AZURE, "base_url": "https://r/openai"}, "takes `endpoint`"),
        ({**AZURE, "entra_id": True, "api_key_env": "K"}, "entra_id and api_key_env"),
    ],
)
def test_a_bad_azure_provider_fails_start_up_naming_it(azure: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"providers\.az") as raised:
        parse_config({"providers": {"az": azure}})
    assert message in str(raised.value)


def test_azure_fields_on_another_kind_are_refused() -> None:
    with pytest.raises(ConfigError, match="endpoint, api_version: only for kind azure"):
        parse_config({"providers": {"o": {"kind": "openai", "endpoint": "https://r", "api_version": "1"}}})


def test_an_api_version_yaml_reads_as_a_date_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ConfigError, match=r"providers\.az\.api_version"):
        parse_config({"providers": {"az": {**AZURE, "api_version": datetime(2024, 10, 21).date()}}})


def test_an_azure_target_is_served_from_its_deployment_or_one_named_as_its_model() -> None:
    config = parse_config(
        config_with(
            {"az": AZURE},
            [
                {"provider": "az", "model": "gpt-4o", "deployment": "prod-4o"},
                {"provider": "az", "model": "gpt-4o-mini"},
            ],
        )
    )
    assert azure_deployments(config) == {"az": {"gpt-4o": "prod-4o", "gpt-4o-mini": "gpt-4o-mini"}}


def test_a_deployment_on_a_target_of_another_kind_is_refused_naming_the_target() -> None:
    config = parse_config(
        config_with({"o": {"kind": "openai"}}, [{"provider": "o", "model": "m", "deployment": "d"}])
    )
    with pytest.raises(ConfigError, match=r"models.alias.targets.0.deployment: only for azure providers"):
        build_providers(config)


def test_one_model_from_two_deployments_of_one_provider_is_refused() -> None:
    config = parse_config(
        {
            **config_with({"az": AZURE}, [{"provider": "az", "model": "gpt-4o", "deployment": "a"}]),
            "models": {
                "one": {"targets": [{"provider": "az", "model": "gpt-4o", "deployment": "a"}]},
                "two": {"targets": [{"provider": "az", "model": "gpt-4o", "deployment": "b"}]},
            },
        }
    )
    with pytest.raises(ConfigError, match=r"models.two.targets.0.deployment: .* from deployment 'a'"):
        azure_deployments(config)


def test_per_model_limits_keyed_by_a_deployment_name_are_refused_naming_the_model_to_use() -> None:
    config = parse_config(
        config_with(
            {"az": {**AZURE, "models": {"prod-4o": {"tpm": 1000}}}},
            [{"provider": "az", "model": "gpt-4o", "deployment": "prod-4o"}],
        )
    )
    with pytest.raises(
        ConfigError, match=r"providers.az.models.prod-4o: .* write providers.az.models.gpt-4o"
    ):
        azure_deployments(config)


def test_entra_id_without_the_azure_extra_fails_start_up_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The dev lock carries azure-identity; a deployment without the extra is one where the
    # import fails (a None in sys.modules makes it fail as a missing module does).
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)
    config = parse_config(
        config_with({"az": {**AZURE, "entra_id": True}}, [{"provider": "az", "model": "m"}])
    )
    with pytest.raises(ConfigError, match=r"providers.az.entra_id: needs azure-identity .*jobgate\[azure\]"):
        build_providers(config)


async def test_build_providers_gives_each_azure_provider_its_deployments() -> None:
    config = parse_config(
        config_with({"az": AZURE}, [{"provider": "az", "model": "gpt-4o", "deployment": "p"}])
    )
    providers = build_providers(config, max_connections=4)
    try:
        azure = providers["az"]
        assert isinstance(azure, AzureProvider)
        assert (azure.deployment("gpt-4o"), azure.deployment("other")) == ("p", "other")
        assert str(azure.client.base_url) == "https://res.openai.azure.com/openai/"
    finally:
        await close_providers(providers)


async def test_a_gemini_provider_without_base_url_calls_googles_openai_compatible_endpoint() -> None:
    config = parse_config(
        config_with({"g": {"kind": "gemini"}}, [{"provider": "g", "model": "gemini-2.5-flash"}])
    )
    providers = build_providers(config, max_connections=4)
    try:
        gemini = providers["g"]
        assert isinstance(gemini, GeminiProvider)
        assert str(gemini.client.base_url) == DEFAULT_BASE_URL
    finally:
        await close_providers(providers)


# --- Gemini's errors ------------------------------------------------------------------------------


def rpc_status(code: int, status: str, *details: dict[str, Any], message: str = "Google's own words") -> dict:
    return {"error": {"code": code, "message": message, "status": status, "details": list(details)}}


RETRY_12S = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}
QUOTA = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "PerMinute"}]}


@pytest.mark.parametrize(
    "body",
    [
        [rpc_status(429, "RESOURCE_EXHAUSTED", QUOTA, RETRY_12S)],  # as Gemini sends it
        rpc_status(429, "RESOURCE_EXHAUSTED", QUOTA, RETRY_12S)["error"],  # as the SDK unwraps an object
    ],
)
def test_resource_exhausted_is_rate_limited_for_the_retry_delay_its_body_names(body: object) -> None:
    error = gemini_error(429, headers={"x-request-id": "req_9"}, body=body, provider="gemini", now=NOW)

    assert isinstance(error, RateLimited)
    assert (error.status_code, error.retry_after_s, error.upstream_code) == (429, 12.0, "RESOURCE_EXHAUSTED")
    assert error.message == "gemini answered 429 (rate limited), request id req_9"


def test_a_retry_after_header_wins_over_the_body() -> None:
    body = [rpc_status(429, "RESOURCE_EXHAUSTED", RETRY_12S)]
    error = gemini_error(429, headers={"retry-after": "3"}, body=body, provider="gemini", now=NOW)
    assert error.retry_after_s == 3.0


@pytest.mark.parametrize(("delay", "seconds"), [("1.5s", 1.5), ("0s", 0.0), ("soon", None), (12, None)])
def test_retry_delays_are_read_as_protobuf_durations(delay: object, seconds: float | None) -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
    error = gemini_error(
        429, headers={}, body=[rpc_status(429, "RESOURCE_EXHAUSTED", retry)], provider="g", now=NOW
    )
    assert error.retry_after_s == seconds


def test_a_key_gemini_refuses_is_auth_not_the_tenants_bad_request() -> None:
    reason = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    body = [
        rpc_status(400, "INVALID_ARGUMENT", reason, message="API key not valid. Please pass a valid API key.")
    ]
    error = gemini_error(400, headers={}, body=body, provider="gemini", now=NOW)

    assert isinstance(error, AuthFailed)
    assert error.upstream_code == "INVALID_ARGUMENT/API_KEY_INVALID"
    assert "API key not valid" not in error.message
    assert error.message.startswith("gemini answered 400 (the gateway's credentials were refused")


def test_other_statuses_map_by_http_status_naming_the_rpc_status_for_the_operator() -> None:
    bad = gemini_error(400, headers={}, body=[rpc_status(400, "INVALID_ARGUMENT")], provider="g", now=NOW)
    busy = gemini_error(503, headers={}, body=[rpc_status(503, "UNAVAILABLE")], provider="g", now=NOW)
    assert (type(bad), bad.upstream_code) == (BadRequest, "INVALID_ARGUMENT")
    assert (type(busy), busy.upstream_code, busy.retry_after_s) == (Overloaded, "UNAVAILABLE", None)


def test_free_text_where_a_status_name_belongs_is_not_repeated() -> None:
    body = [rpc_status(429, "quota of project my-secret-project exhausted")]
    error = gemini_error(429, headers={}, body=body, provider="g", now=NOW)
    assert error.upstream_code is None and "my-secret-project" not in error.message
