"""`jobgate config import` (core/litellm_import.py): a LiteLLM proxy config becomes a jobgate config
that `jobgate config check` accepts once its keys are set and what the import lists is filled in;
what cannot be carried over is named; a broken file fails with every error and no config."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config_check import check_config
from core.litellm_import import ImportResult, import_litellm_text, render_config

DATA = Path(__file__).resolve().parents[1] / "data" / "litellm"
REAL_WORLD = DATA / "proxy_server_config.yaml"


def convert(text: str) -> ImportResult:
    result = import_litellm_text(textwrap.dedent(text))
    assert result.errors == []
    assert result.config is not None
    return result


def config_of(result: ImportResult) -> dict[str, Any]:
    """The config as the operator gets it: rendered to YAML and read back."""
    loaded = yaml.safe_load(render_config(result, source="litellm.yaml"))
    assert isinstance(loaded, dict)
    return loaded


def keys_for(result: ImportResult) -> dict[str, str]:
    return {name: "set" for name in result.env_vars}


# --- The real-world file ----------------------------------------------------------------------------


def test_the_real_world_litellm_config_converts_with_every_skipped_entry_named() -> None:
    result = convert(REAL_WORLD.read_text())
    skipped = [w for w in result.warnings if ": skipped, " in w]
    assert [w.split(":")[0] for w in skipped] == [
        "model_list.5 (sagemaker-completion-model)",
        "model_list.6 (text-embedding-ada-002)",
        "model_list.7 (dall-e-2)",
        "model_list.8 (openai-dall-e-3)",
        "model_list.14 (*)",
        "model_list.15 (anthropic/*)",
        "model_list.16 (groq/*)",
        "model_list.17 (mistral-embed)",
        "model_list.18 (gpt-instruct)",
    ]
    assert "provider 'sagemaker' has no jobgate kind" in skipped[0]
    assert "a wildcard route" in skipped[4]
    assert (
        "litellm_settings.context_window_fallbacks: not carried over (only fallbacks are)" in result.warnings
    )
    assert (
        "general_settings: not carried over (jobgate's settings, keys and tenants replace it)"
        in result.warnings
    )
    assert "model_list.3 (gpt-3.5-turbo-large): not carried over: stream_timeout" in result.warnings


def test_the_real_world_config_keeps_its_aliases_strategy_limits_and_upstreams() -> None:
    config = config_of(convert(REAL_WORLD.read_text()))
    azure = "azure-openai-gpt-4-test-v-1"
    assert config["providers"][azure] == {
        "kind": "azure",
        "endpoint": "https://openai-gpt-4-test-v-1.openai.azure.com",
        "api_version": "2023-05-15",
        "api_key_env": "AZURE_API_KEY",
        "timeout_s": 300,
        "models": {"chatgpt-v-2": {"rpm": 480}},
    }
    assert config["providers"]["openai"]["models"] == {"gpt-3.5-turbo-1106": {"rpm": 480}}
    models = config["models"]
    # Two deployments under one model_name: one alias, its targets in the file's order, and
    # usage-based-routing-v2 (lowest use of its limits) is least_busy.
    assert models["gpt-3.5-turbo-end-user-test"] == {
        "strategy": "least_busy",
        "targets": [
            {"provider": "openai", "model": "gpt-3.5-turbo"},
            {"provider": azure, "model": "chatgpt-v-2"},
        ],
    }
    assert models["gpt-4"] == {"targets": [{"provider": azure, "model": "chatgpt-v-2"}]}
    # model_group_alias: another name for a route.
    assert models["my-special-fake-model-alias-name"] == models["fake-openai-endpoint-3"]
    assert len(models["fake-openai-endpoint-3"]["targets"]) == 2
    # rpm 1 and rpm 1000 for one upstream model: the lower holds.
    fake = models["fake-openai-endpoint-2"]["targets"][0]["provider"]
    assert config["providers"][fake]["models"]["my-fake-model"] == {"rpm": 1}
    assert config["cache"] == {"default": False}


def test_keys_written_in_the_real_world_file_are_never_copied() -> None:
    result = convert(REAL_WORLD.read_text())
    rendered = render_config(result, source="proxy_server_config.yaml")
    for secret in ("fake-key", "my-fake-key", "sk-1234", "LANGFUSE", "REDIS_PASSWORD"):
        assert secret not in rendered
    literal = [w for w in result.warnings if "api_key is written in the file" in w]
    assert len(literal) == 2
    assert "set $OPENAI_EXAMPLEOPENAIENDPOINT_PRODUCTION_API_KEY" in literal[0]


def test_the_real_world_output_passes_config_check_once_its_keys_are_set_and_prices_filled_in() -> None:
    result = convert(REAL_WORLD.read_text())
    config = config_of(result)
    report = check_config(config, source="out.yaml", environ={})
    # Without keys and prices, the check says exactly what the import listed.
    unset = {p.key.split(".")[1] for p in report.errors if p.key.endswith("api_key_env")}
    assert unset == {name for name, p in config["providers"].items() if "api_key_env" in p}
    fill_in = [line.split(":")[0] for line in result.fill_in]
    assert fill_in == [
        "pricing.gpt-3.5-turbo",
        "pricing.chatgpt-v-2",
        "pricing.gpt-3.5-turbo-1106",
        "pricing.fake",
        "pricing.my-fake-model",
        "pricing.my-fake-model-2",
        "pricing.bad-model",
    ]
    for key in fill_in:
        config["pricing"][key.removeprefix("pricing.")] = {"input_per_mtok": 0.5, "output_per_mtok": 1.5}
    report = check_config(config, source="out.yaml", environ=keys_for(result))
    assert report.errors == []
    assert report.config is not None
    # LiteLLM's alias gpt-3.5-turbo (an Azure deployment) shadows OpenAI's model of that name.
    assert [p.key for p in report.warnings] == ["models.gpt-3.5-turbo"]


# --- What each part of a LiteLLM file becomes --------------------------------------------------------


def test_deployments_sharing_a_model_name_load_balance_by_weight_then_rpm_as_simple_shuffle_does() -> None:
    config = config_of(
        convert(
            """
            model_list:
              - model_name: fast
                litellm_params: {model: openai/gpt-4o-mini, weight: 3}
              - model_name: fast
                litellm_params: {model: deepseek/deepseek-chat, api_key: os.environ/DEEPSEEK_KEY, weight: 1}
              - model_name: by-rpm
                litellm_params: {model: openai/gpt-4o, rpm: 900}
              - model_name: by-rpm
                litellm_params: {model: gemini/gemini-2.5-flash, rpm: 300}
              - model_name: even
                litellm_params: {model: gpt-4o}
              - model_name: even
                litellm_params: {model: claude-haiku-4-5}
            """
        )
    )
    assert config["models"] == {
        "fast": {
            "strategy": "weighted",
            "targets": [
                {"provider": "openai", "model": "gpt-4o-mini", "weight": 3},
                {"provider": "deepseek", "model": "deepseek-chat", "weight": 1},
            ],
        },
        "by-rpm": {
            "strategy": "weighted",
            "targets": [
                {"provider": "openai", "model": "gpt-4o", "weight": 900},
                {"provider": "gemini", "model": "gemini-2.5-flash", "weight": 300},
            ],
        },
        "even": {
            "strategy": "weighted",
            "targets": [
                {"provider": "openai", "model": "gpt-4o", "weight": 1},
                {"provider": "anthropic", "model": "claude-haiku-4-5", "weight": 1},
            ],
        },
    }
    assert config["providers"]["deepseek"] == {
        "kind": "openai",
        "base_url": "https://api.deepseek.com/v1",
        "api_key_env": "DEEPSEEK_KEY",
    }
    assert config["providers"]["gemini"] == {
        "kind": "gemini",
        "api_key_env": "GEMINI_API_KEY",
        "models": {"gemini-2.5-flash": {"rpm": 300}},
    }


@pytest.mark.parametrize(
    ("litellm", "jobgate"),
    [
        ("least-busy", "least_busy"),
        ("usage-based-routing", "least_busy"),
        ("usage-based-routing-v2", "least_busy"),
        ("latency-based-routing", "lowest_latency"),
        ("cost-based-routing", "lowest_cost"),
    ],
)
def test_each_routing_strategy_maps_to_its_jobgate_strategy(litellm: str, jobgate: str) -> None:
    config = config_of(
        convert(
            f"""
            model_list:
              - {{model_name: m, litellm_params: {{model: openai/gpt-4o}}}}
              - {{model_name: m, litellm_params: {{model: anthropic/claude-sonnet-4-5}}}}
              - {{model_name: single, litellm_params: {{model: openai/gpt-4o-mini}}}}
            router_settings: {{routing_strategy: {litellm}}}
            """
        )
    )
    assert config["models"]["m"]["strategy"] == jobgate
    assert "weight" not in config["models"]["m"]["targets"][0]
    assert "strategy" not in config["models"]["single"]  # one target: nothing to choose


def test_an_unknown_routing_strategy_falls_back_and_says_so() -> None:
    result = convert(
        """
        model_list:
          - {model_name: m, litellm_params: {model: openai/gpt-4o}}
          - {model_name: m, litellm_params: {model: anthropic/claude-sonnet-4-5}}
        router_settings: {routing_strategy: lar1}
        """
    )
    assert "strategy" not in config_of(result)["models"]["m"]
    assert "router_settings.routing_strategy 'lar1': no match; fallback used" in result.warnings


def test_fallbacks_become_the_targets_after_an_alias_own() -> None:
    result = convert(
        """
        model_list:
          - {model_name: gpt-4o, litellm_params: {model: openai/gpt-4o}}
          - {model_name: claude, litellm_params: {model: anthropic/claude-sonnet-4-5}}
          - {model_name: local, litellm_params: {model: ollama/llama3.2, api_base: "http://gpu-box:11434"}}
          - {model_name: pair, litellm_params: {model: openai/gpt-4o-mini, weight: 4}}
          - {model_name: pair, litellm_params: {model: openai/gpt-4.1-mini, weight: 2}}
        router_settings:
          fallbacks: [{gpt-4o: [claude, local]}, {pair: [claude]}, {claude: [nowhere]}]
        litellm_settings:
          fallbacks: [{claude: [gpt-4o]}]
        """
    )
    models = config_of(result)["models"]
    assert models["gpt-4o"] == {
        "targets": [
            {"provider": "openai", "model": "gpt-4o"},
            {"provider": "anthropic", "model": "claude-sonnet-4-5"},
            {"provider": "ollama-gpu-box", "model": "llama3.2"},
        ]
    }
    assert [t["model"] for t in models["claude"]["targets"]] == ["claude-sonnet-4-5", "gpt-4o"]
    # Under a strategy a fallback may be picked first: under weighted, with a small share.
    assert models["pair"]["targets"][2] == {
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "weight": 0.02,
    }
    assert any(
        w.startswith("models.pair: its fallbacks join its targets with weight 0.02") for w in result.warnings
    )
    assert (
        "router_settings.fallbacks: claude -> nowhere: 'nowhere' is not an imported model" in result.warnings
    )


def test_costs_per_token_become_prices_per_million_keyed_by_provider_where_they_differ() -> None:
    result = convert(
        """
        model_list:
          - model_name: gpt-4o
            litellm_params: {model: azure/prod-4o, api_base: "https://eu.openai.azure.com/",
                             api_version: 2024-10-21, api_key: os.environ/AZURE_EU_KEY,
                             input_cost_per_token: 0.0000025}
            model_info: {base_model: azure/gpt-4o, output_cost_per_token: 1.0e-05,
                         cache_read_input_token_cost: 1.25e-06}
          - model_name: gpt-4o
            litellm_params: {model: azure/prod-4o, api_base: "https://us.openai.azure.com",
                             api_version: "2024-10-21", input_cost_per_token: 0.0000025,
                             output_cost_per_token: 0.00001, cache_read_input_token_cost: 0.00000125}
            model_info: {base_model: gpt-4o}
          - model_name: gpt-4o
            litellm_params: {model: openai/gpt-4o, input_cost_per_token: 3e-06,
                             output_cost_per_token: 1.2e-05}
          - model_name: gpt-4o
            litellm_params: {model: openrouter/openai/gpt-4o}
        """
    )
    config = config_of(result)
    assert config["pricing"] == {
        "gpt-4o": {"input_per_mtok": 2.5, "output_per_mtok": 10, "cached_input_per_mtok": 1.25},
        "openai/gpt-4o": {"input_per_mtok": 3, "output_per_mtok": 12},
    }
    assert result.fill_in == [
        "pricing.openrouter/openai/gpt-4o: input_per_mtok, output_per_mtok (USD per million tokens;"
        " none in the file)"
    ]
    # An Azure deployment is priced and limited as its base model; the deployment goes in the URL.
    assert config["models"]["gpt-4o"]["targets"][0] == {
        "provider": "azure-eu",
        "model": "gpt-4o",
        "deployment": "prod-4o",
        "weight": 1,
    }
    assert config["providers"]["azure-eu"]["api_version"] == "2024-10-21"  # unquoted in the file: a date


def test_two_azure_deployments_of_one_model_on_one_endpoint_become_two_providers() -> None:
    result = convert(
        """
        model_list:
          - model_name: gpt-4o
            litellm_params: {model: azure/standard-4o, api_base: https://r.openai.azure.com,
                             api_version: "2024-10-21", tpm: 450000,
                             input_cost_per_token: 2.5e-06, output_cost_per_token: 1.0e-05}
            model_info: {base_model: gpt-4o}
          - model_name: gpt-4o
            litellm_params: {model: azure/provisioned-4o, api_base: https://r.openai.azure.com,
                             api_version: "2024-10-21", tpm: 900000,
                             input_cost_per_token: 2.5e-06, output_cost_per_token: 1.0e-05}
            model_info: {base_model: gpt-4o}
        """
    )
    config = config_of(result)
    assert [(t["provider"], t["deployment"], t["weight"]) for t in config["models"]["gpt-4o"]["targets"]] == [
        ("azure-r", "standard-4o", 450000),
        ("azure-r-2", "provisioned-4o", 900000),
    ]
    assert config["providers"]["azure-r-2"]["models"] == {"gpt-4o": {"tpm": 900000}}
    assert check_config(config, source="out", environ=keys_for(result)).errors == []


def test_urls_litellm_reads_from_the_environment_are_placeholders_the_check_refuses() -> None:
    result = convert(
        """
        model_list:
          - model_name: gpt-4o-mini
            litellm_params: {model: azure/gpt-4o-mini, api_base: os.environ/AZURE_API_BASE,
                             api_version: os.environ/AZURE_API_VERSION}
            model_info: {max_output_tokens: 16384}
          - model_name: qwen
            litellm_params: {model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct}
        """
    )
    assert result.fill_in == [
        "providers.azure.endpoint: the URL LiteLLM read from $AZURE_API_BASE",
        "providers.azure.api_version: LiteLLM read it from $AZURE_API_VERSION",
        "providers.hosted-vllm.base_url: the URL LiteLLM read from $HOSTED_VLLM_API_BASE",
        "pricing.gpt-4o-mini: input_per_mtok, output_per_mtok (USD per million tokens; none in the file)",
    ]
    config = config_of(result)
    assert config["models"]["gpt-4o-mini"]["targets"] == [
        {"provider": "azure", "model": "gpt-4o-mini", "max_output_tokens": 16384}
    ]
    errors = [p.key for p in check_config(config, source="out", environ=keys_for(result)).errors]
    assert errors == [
        "providers.azure",  # api_version
        "models.gpt-4o-mini.targets.0.model",  # its price
        "providers.azure.endpoint",
        "providers.hosted-vllm.base_url",
    ]


def test_self_hosted_servers_are_free_and_ollama_is_called_on_its_openai_path() -> None:
    result = convert(
        """
        model_list:
          - {model_name: local, litellm_params: {model: ollama_chat/llama3.2}}
          - {model_name: qwen, litellm_params: {model: hosted_vllm/qwen, api_base: "http://vllm:8000/v1/"}}
        litellm_settings: {request_timeout: 120, cache: true, cache_params: {type: redis, ttl: 600}}
        """
    )
    config = config_of(result)
    assert config["providers"] == {
        "ollama": {"kind": "openai", "base_url": "http://localhost:11434/v1", "free": True, "timeout_s": 120},
        "hosted-vllm-vllm": {
            "kind": "openai",
            "base_url": "http://vllm:8000/v1",
            "free": True,
            "timeout_s": 120,
        },
    }
    assert config["pricing"] == {}
    assert config["cache"] == {"default": True, "ttl_s": 600}
    assert result.env_vars == []
    assert check_config(config, source="out", environ={}).problems == []


def test_the_same_upstream_with_two_written_keys_is_two_providers_reading_two_variables() -> None:
    result = convert(
        """
        model_list:
          - {model_name: gpt-4o, litellm_params: {model: gpt-4o, api_key: sk-first-account}, rpm: 3}
          - {model_name: gpt-4o, litellm_params: {model: gpt-4o, api_key: sk-second-account}, rpm: 3}
          - {model_name: again, litellm_params: {model: gpt-4o, api_key: sk-first-account}}
        """
    )
    config = config_of(result)
    assert {name: p["api_key_env"] for name, p in config["providers"].items()} == {
        "openai": "OPENAI_API_KEY",
        "openai-2": "OPENAI_2_API_KEY",
    }
    assert config["models"]["again"]["targets"] == [{"provider": "openai", "model": "gpt-4o"}]
    assert config["providers"]["openai"]["models"] == {"gpt-4o": {"rpm": 3}}
    assert "sk-first-account" not in render_config(result, source="x")


# --- Broken files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("model_list: [unclosed", ["not valid YAML: "]),
        ("- a\n- list\n", ["not a LiteLLM proxy config: no model_list (a list of deployments)"]),
        ("providers: {openai: {kind: openai}}\n", ["not a LiteLLM proxy config: no model_list"]),
        ("model_list: []\n", ["not a LiteLLM proxy config: no model_list"]),
        (
            "model_list:\n  - litellm_params: {model: gpt-4o}\n  - model_name: x\n  - model_name: y\n"
            "    litellm_params: {model: openai/gpt-4o, api_key: os.environ/NOT A NAME}\n",
            [
                "model_list.0: needs model_name (a string) and litellm_params",
                "model_list.1 (x): litellm_params.model is missing or not a string",
                "model_list.2 (y): api_key: 'os.environ/NOT A NAME' does not name an environment variable",
            ],
        ),
        (
            "model_list:\n  - {model_name: e, litellm_params: {model: openai/text-embedding-3-small}}\n",
            ["no model_list entry is a chat model jobgate can serve (see the warnings)"],
        ),
    ],
)
def test_a_broken_litellm_file_yields_every_error_and_no_config(text: str, errors: list[str]) -> None:
    result = import_litellm_text(text)
    assert result.config is None
    assert len(result.errors) == len(errors)
    for error, expected in zip(result.errors, errors, strict=True):
        assert error.startswith(expected)


def test_nothing_in_the_file_is_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = import_litellm_text(f"model_list:\n  - !!python/object/apply:os.system ['touch {marker}']\n")
    assert result.config is None
    assert "could not determine a constructor" in result.errors[0]
    assert not marker.exists()
