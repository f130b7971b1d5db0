"""`jobgate config check` and `jobgate config import` as an operator runs them: real processes
(`python -m jobgate`), their exit status, stdout and stderr, and never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.processes import PROJECT_ROOT, jobgate_env

pytestmark = pytest.mark.e2e

REAL_WORLD = PROJECT_ROOT / "tests" / "data" / "litellm" / "proxy_server_config.yaml"
GOOD = """\
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: JOBGATE_TEST_OPENAI_KEY}
  local:  {kind: openai, base_url: http://127.0.0.1:11434/v1, free: true}
models:
  fast: {targets: [{provider: openai, model: gpt-4o-mini}, {provider: local, model: llama3.2}]}
pricing: {gpt-4o-mini: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
"""
BROKEN = """\
providers:
  openai: {kind: openai, api_key_env: JOBGATE_TEST_OPENAI_KEY, rpm: 0}
  azure:  {kind: azure, endpoint: https://r.openai.azure.com}
models:
  fast: {targets: [{provider: openai, model: gpt-4o-mini}, {provider: anthropic, model: claude-haiku-4-5}]}
  solo: {strategy: weighted, targets: [{provider: azure, model: gpt-4o}]}
"""


def jobgate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobgate", *args],
        cwd=cwd,
        env={**jobgate_env(), "PYTHONPATH": str(PROJECT_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_passes_a_good_file_with_its_keys_set(tmp_path: Path) -> None:
    (tmp_path / "jobgate.yaml").write_text(GOOD)
    done = jobgate("config", "check", "jobgate.yaml", cwd=tmp_path, JOBGATE_TEST_OPENAI_KEY="sk-test")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "jobgate.yaml: ok, 2 providers, 1 models (0 errors, 0 warnings)\n"
    # Without FILE it checks the file the gateway would load: ./jobgate.yaml here.
    assert jobgate("config", "check", cwd=tmp_path, JOBGATE_TEST_OPENAI_KEY="sk-test").returncode == 0


def test_config_check_lists_every_problem_of_a_broken_file_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    done = jobgate("config", "check", "broken.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "broken.yaml: error: providers.openai.rpm: Input should be greater than or equal to 1 (got 0)",
        "broken.yaml: error: providers.azure: Value error, kind azure needs api_version",
        "broken.yaml: error: models.fast.targets.0.model: no price for 'gpt-4o-mini'; add pricing.gpt-4o-mini"
        ' or pricing."openai/gpt-4o-mini" (input_per_mtok, output_per_mtok; 0 if it is free), or mark'
        " provider 'openai' `free: true`",
        "broken.yaml: error: models.fast.targets.1.provider: unknown provider 'anthropic'"
        " (known: azure, openai)",
        "broken.yaml: error: models.solo.targets.0.model: no price for 'gpt-4o'; add pricing.gpt-4o or"
        ' pricing."azure/gpt-4o" (input_per_mtok, output_per_mtok; 0 if it is free), or mark provider'
        " 'azure' `free: true`",
        "broken.yaml: 5 errors, 0 warnings",
    ]
    assert done.stdout == ""


def test_config_check_names_each_unset_key_unless_told_not_to_look(tmp_path: Path) -> None:
    (tmp_path / "jobgate.yaml").write_text(GOOD)
    done = jobgate("config", "check", "jobgate.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert (
        "providers.openai.api_key_env: environment variable JOBGATE_TEST_OPENAI_KEY is not set" in done.stderr
    )
    assert jobgate("config", "check", "--no-env", "jobgate.yaml", cwd=tmp_path).returncode == 0


def test_config_check_of_a_missing_file_or_bad_yaml_exits_1_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("providers: [unclosed\n")
    for name in ("bad.yaml", "absent.yaml"):
        done = jobgate("config", "check", name, cwd=tmp_path)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith(f"{name}: error: ")


def test_config_import_converts_the_real_world_file_into_one_config_check_accepts(tmp_path: Path) -> None:
    done = jobgate("config", "import", str(REAL_WORLD), "-o", "jobgate.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "warning: model_list.5 (sagemaker-completion-model): skipped" in done.stderr
    fill_in = [
        line.removeprefix("fill in: ") for line in done.stderr.splitlines() if line.startswith("fill in: ")
    ]
    unset = [
        line.split(": ")[1]
        for line in done.stderr.splitlines()
        if line.startswith("set in the environment: ")
    ]
    assert len(fill_in) == 7
    assert "AZURE_API_KEY" in unset
    # Refuses to overwrite what it wrote.
    again = jobgate("config", "import", str(REAL_WORLD), "-o", "jobgate.yaml", cwd=tmp_path)
    assert again.returncode == 2
    assert "exists (--force overwrites it)" in again.stderr

    config = yaml.safe_load((tmp_path / "jobgate.yaml").read_text())
    for item in fill_in:
        config["pricing"][item.split(":")[0].removeprefix("pricing.")] = {
            "input_per_mtok": 1,
            "output_per_mtok": 2,
        }
    (tmp_path / "jobgate.yaml").write_text(yaml.safe_dump(config))
    keys = {name: "set" for name in unset}
    checked = jobgate("config", "check", "jobgate.yaml", cwd=tmp_path, **keys)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("jobgate.yaml: ok, 5 providers, 9 models")


def test_config_import_of_a_file_that_is_not_a_litellm_config_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "jobgate.yaml").write_text(GOOD)
    done = jobgate("config", "import", "jobgate.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "jobgate.yaml: error: not a LiteLLM proxy config: no model_list (a list of deployments)",
        "jobgate.yaml: not converted",
    ]
