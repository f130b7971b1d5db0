"""`jobgate config check`'s logic (core/config_check.py): every problem of a config file at once,
named by its key; errors for what start-up refuses or what could never work, warnings for what
loads but is probably not meant; and a file with no errors is one start-up accepts."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from core.config import GatewayConfig, parse_config
from core.config_check import (
    SECTIONS,
    SINGLE_SECTIONS,
    CheckReport,
    check_config,
    check_config_file,
    check_config_text,
)
from core.providers import build_providers, close_providers

GOOD = """
providers:
  openai:    {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY, rpm: 500,
              models: {gpt-4o-mini: {tpm: 200000}}}
  anthropic: {kind: anthropic, base_url: https://api.anthropic.com, api_key_env: ANTHROPIC_API_KEY}
  azure:     {kind: azure, endpoint: https://res.openai.azure.com, api_version: "2024-10-21",
              api_key_env: AZURE_OPENAI_API_KEY, models: {gpt-4o: {rpm: 2700}}}
  ollama:    {kind: openai, base_url: http://127.0.0.1:11434/v1, free: true}
models:
  fast:  {targets: [{provider: openai, model: gpt-4o-mini}, {provider: anthropic, model: claude-haiku-4-5}]}
  split: {strategy: weighted, targets: [{provider: azure, model: gpt-4o, deployment: gpt-4o-prod, weight: 3},
                                        {provider: openai, model: gpt-4o, weight: 1}]}
  local: {targets: [{provider: ollama, model: llama3.2}]}
pricing:
  gpt-4o-mini: {input_per_mtok: 0.15, output_per_mtok: 0.60}
  claude-haiku-4-5: {input_per_mtok: 1.00, output_per_mtok: 5.00}
  gpt-4o: {input_per_mtok: 2.50, output_per_mtok: 10.00}
tenants: {default: {rpm: 600}}
"""
KEYS = {"OPENAI_API_KEY": "sk-a", "ANTHROPIC_API_KEY": "sk-b", "AZURE_OPENAI_API_KEY": "k"}


def check(text: str, environ: dict[str, str] | None = None) -> CheckReport:
    return check_config_text(textwrap.dedent(text), source="jobgate.yaml", environ=environ)


def lines(report: CheckReport) -> list[str]:
    return [f"{p.severity}: {p}" for p in report.problems]


def test_a_good_config_has_no_problem_and_loads() -> None:
    report = check(GOOD, KEYS)
    assert report.problems == []
    assert isinstance(report.config, GatewayConfig)
    assert set(report.config.models) == {"fast", "split", "local"}


async def test_a_config_the_check_passes_builds_every_provider_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    report = check(GOOD, KEYS)
    assert report.config is not None
    providers = build_providers(report.config)
    await close_providers(providers)
    assert set(providers) == {"openai", "anthropic", "azure", "ollama"}


def test_every_schema_error_is_listed_not_only_the_first() -> None:
    report = check(
        """
        providers:
          a: {kind: openai, rpm: 0}
          b: {kind: bedrock}
          c: {kind: azure, endpoint: https://r.openai.azure.com}
          d: {kind: openai, colour: blue}
        models:
          empty: {targets: []}
          odd: {strategy: random, targets: [{provider: a, model: m}]}
        pricing: {m: {input_per_mtok: lots}}
        cache: {ttl_s: 0}
        extras: 1
        """
    )
    assert lines(report) == [
        "error: extras: unknown section (known: cache, models, pricing, providers, tenants)",
        "error: providers.a.rpm: Input should be greater than or equal to 1 (got 0)",
        "error: providers.b.kind: Input should be 'openai', 'anthropic', 'azure' or 'gemini' (got 'bedrock')",
        "error: providers.c: Value error, kind azure needs api_version",
        "error: providers.d.colour: Extra inputs are not permitted (got 'blue')",
        "error: models.empty.targets: List should have at least 1 item after validation, not 0",
        "error: models.odd.strategy: Input should be 'fallback', 'weighted', 'least_busy', 'lowest_latency'"
        " or 'lowest_cost' (got 'random')",
        "error: pricing.m.input_per_mtok: Input should be a valid decimal (got 'lots')",
        "error: cache.ttl_s: Input should be greater than or equal to 1 (got 0)",
    ]
    assert report.config is None


def test_each_unknown_provider_and_each_unpriced_target_is_named() -> None:
    report = check(
        """
        providers:
          openai: {kind: openai}
          broken: {kind: openai, rpm: -1}
        models:
          a: {targets: [{provider: opneai, model: gpt-4o}, {provider: openai, model: gpt-4o}]}
          b: {targets: [{provider: openai, model: o3}, {provider: nobody, model: x},
                        {provider: broken, model: y}]}
        pricing: {gpt-4o: {input_per_mtok: 2.5}}
        """
    )
    errors = [str(p) for p in report.errors]
    assert errors == [
        "providers.broken.rpm: Input should be greater than or equal to 1 (got -1)",
        "models.a.targets.0.provider: unknown provider 'opneai' (known: broken, openai)",
        "models.b.targets.0.model: no price for 'o3'; add pricing.o3 or pricing.\"openai/o3\""
        " (input_per_mtok, output_per_mtok; 0 if it is free), or mark provider 'openai' `free: true`",
        "models.b.targets.1.provider: unknown provider 'nobody' (known: broken, openai)",
        "models.b.targets.2.model: no price for 'y'; add pricing.y or pricing.\"broken/y\""
        " (input_per_mtok, output_per_mtok; 0 if it is free), or mark provider 'broken' `free: true`",
    ]


def test_a_provider_price_or_a_free_provider_prices_a_target() -> None:
    report = check(
        """
        providers:
          backup: {kind: openai, base_url: https://backup.example.com/v1}
          local:  {kind: openai, base_url: http://127.0.0.1:8000/v1, free: true}
        models:
          m: {targets: [{provider: backup, model: gpt-4o}, {provider: local, model: qwen}]}
        pricing: {backup/gpt-4o: {input_per_mtok: 3, output_per_mtok: 12}}
        """
    )
    assert report.problems == []


def test_each_missing_or_empty_key_variable_is_named_and_only_when_the_environment_is_checked() -> None:
    text = GOOD
    report = check(text, {"OPENAI_API_KEY": "sk-a", "ANTHROPIC_API_KEY": ""})
    assert [str(p) for p in report.errors] == [
        "providers.anthropic.api_key_env: environment variable ANTHROPIC_API_KEY is empty",
        "providers.azure.api_key_env: environment variable AZURE_OPENAI_API_KEY is not set",
    ]
    assert check(text, None).problems == []


def test_entra_id_without_azure_identity_installed_is_an_error_of_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("core.config_check._installed", lambda module: False)
    text = """
        providers:
          az: {kind: azure, endpoint: https://r.openai.azure.com, api_version: "2024-10-21", entra_id: true}
        models: {m: {targets: [{provider: az, model: gpt-4o}]}}
        pricing: {gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10}}
        """
    assert [str(p) for p in check(text, {}).errors] == [
        "providers.az.entra_id: needs azure-identity (pip install 'jobgate[azure]')"
    ]
    assert check(text, None).errors == []


def test_azure_deployment_rules_are_reported_for_every_provider() -> None:
    report = check(
        """
        providers:
          az1: {kind: azure, endpoint: https://a.openai.azure.com, api_version: "2024-10-21"}
          az2: {kind: azure, endpoint: https://b.openai.azure.com, api_version: "2024-10-21",
                models: {prod-4o: {rpm: 10}}}
          openai: {kind: openai}
        models:
          m: {targets: [{provider: az1, model: gpt-4o, deployment: one},
                        {provider: az1, model: gpt-4o, deployment: two},
                        {provider: az2, model: gpt-4o, deployment: prod-4o},
                        {provider: openai, model: gpt-4o, deployment: x}]}
        pricing: {gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10}}
        """
    )
    assert [str(p) for p in report.errors] == [
        "models.m.targets.1.deployment: provider 'az1' already serves 'gpt-4o' from deployment 'one'; a"
        " provider has one deployment per model (declare a second azure provider for the other deployment)",
        "providers.az2.models.prod-4o: limits are keyed by the target's model, not its deployment:"
        " write providers.az2.models.gpt-4o",
        "models.m.targets.3.deployment: only for azure providers ('openai' is kind openai)",
    ]


def test_a_placeholder_url_left_in_is_an_error() -> None:
    report = check(
        """
        providers:
          az: {kind: azure, endpoint: "https://azure-api-base.fill-in.invalid", api_version: "2024-10-21"}
          vllm: {kind: openai, base_url: "https://hosted-vllm-api-base.fill-in.invalid/v1", free: true}
        models: {m: {targets: [{provider: az, model: gpt-4o}, {provider: vllm, model: qwen}]}}
        pricing: {gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10}}
        """
    )
    assert [p.key for p in report.errors] == ["providers.az.endpoint", "providers.vllm.base_url"]
    assert "fill in the real URL" in str(report.errors[0])


def test_what_loads_but_is_probably_not_meant_is_a_warning() -> None:
    report = check(
        """
        providers:
          openai: {kind: openai, models: {gpt-4o-mini: {rpm: 5}, gpt-5: {rpm: 5}}}
          backup: {kind: openai, base_url: https://backup.example.com/v1}
        models:
          split: {strategy: weighted, targets: [{provider: openai, model: gpt-4o-mini, weight: 3},
                                                {provider: backup, model: gpt-4o-mini}]}
          ordered: {targets: [{provider: openai, model: gpt-4o-mini, weight: 2}]}
          gpt-4o-mini: {targets: [{provider: backup, model: gpt-4o-mini}]}
        pricing:
          gpt-4o-mini: {input_per_mtok: 0.15, output_per_mtok: 0.6}
          gpt-3.5-turbo: {input_per_mtok: 0.5, output_per_mtok: 1.5}
        """
    )
    assert report.errors == []
    assert report.config is not None
    assert lines(report) == [
        "warning: providers.openai.models.gpt-5: no target of provider 'openai' serves 'gpt-5':"
        " these limits never apply",
        "warning: models.split.targets.1.weight: strategy weighted and no weight: it counts 1",
        "warning: models.ordered.targets.0.weight: only strategy weighted reads weights"
        " (this alias is fallback)",
        "warning: models.gpt-4o-mini: also the model of models.split's target at provider 'openai':"
        " a request for 'gpt-4o-mini' reaches this alias, never that target directly",
        "warning: models.gpt-4o-mini: also the model of models.ordered's target at provider 'openai':"
        " a request for 'gpt-4o-mini' reaches this alias, never that target directly",
        "warning: pricing.gpt-3.5-turbo: no target serves this model: the price is never used",
    ]


def test_a_key_given_twice_is_an_error_naming_both_lines() -> None:
    report = check(
        """
        providers:
          openai: {kind: openai, free: true}
          openai: {kind: anthropic, free: true}
        models: {m: {targets: [{provider: openai, model: x}]}}
        """
    )
    assert [str(p) for p in report.errors] == [
        "providers.openai: given twice (again on line 4); YAML keeps only the last"
    ]
    assert report.config is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("providers: [unclosed", "(yaml): not valid YAML: "),
        ("- just\n- a list\n", "(top level): expected a mapping with 'providers' and 'models'"),
        ("models: {}\n", "providers: required: at least one provider"),
        ("providers:\n", "providers: expected a mapping of names to entries, got nothing"),
        ("providers: {1: {kind: openai}}\n", "providers.1: a name must be a string (quote it)"),
    ],
)
def test_a_file_that_is_not_a_config_is_one_clear_problem(text: str, expected: str) -> None:
    report = check(text)
    assert str(report.errors[0]).startswith(expected)
    assert report.config is None


def test_a_file_that_cannot_be_read_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    report = check_config_file(tmp_path / "absent.yaml", environ=None)
    assert [str(p) for p in report.errors] == ["(file): cannot read config file: No such file or directory"]


def test_the_built_in_dev_config_passes() -> None:
    from core.config import dev_config_dict

    assert check_config(dev_config_dict(), source="built-in", environ={}).problems == []


def test_the_check_reads_every_section_of_the_config_model() -> None:
    # A section added to GatewayConfig and not here would go unchecked entry by entry.
    assert set(SECTIONS) | set(SINGLE_SECTIONS) == set(GatewayConfig.model_fields)


def test_a_config_without_errors_is_what_start_up_parses(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "providers": {"sim": {"kind": "openai", "base_url": "http://127.0.0.1:8001/v1", "free": True}},
        "models": {"fast": {"strategy": "least_busy", "targets": [{"provider": "sim", "model": "a"}]}},
    }
    report = check_config(data, source="x", environ={})
    assert report.config == parse_config(data)
