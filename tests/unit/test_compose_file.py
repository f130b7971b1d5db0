"""docker-compose.yml agrees with the code it deploys (Docker cannot run here, so it is read).

Every service it depends on, file it mounts, command it runs, `JOBGATE_*` variable it sets and
port it names must exist and match: the commands parse with jobgate's own CLI, the variables
are Settings fields with valid values, the proxy, Prometheus and the health checks name the
ports the commands listen on, the Grafana dashboard's queries use metric names jobgate exports,
and the Postgres connections of the scale README shows stay under the server's limit.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import core.metrics
from core.config import load_config, parse_config
from core.services.job_engine import JOB_SQL_CONNECTIONS
from core.settings import Settings
from jobgate.cli import PASSTHROUGH, build_parser
from sim.cli import build_parser as build_sim_parser
from tests.compose import bind_mounts, command, compose_variables, environment, load_compose, option
from tests.processes import PROJECT_ROOT
from workers.composition import AUX_SQL_CONNECTIONS

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
JOBGATE_SERVICES = [name for name, service in SERVICES.items() if command(service)[:1] == ["jobgate"]]
EXAMPLE_CONFIG = PROJECT_ROOT / "jobgate.example.yaml"


def _mounted(service: str, target: str) -> Path:
    """The checkout file or folder a service mounts at `target`."""
    for source, mounted_at in bind_mounts(SERVICES[service]):
        if mounted_at == target:
            return source
    raise AssertionError(f"{service} mounts nothing at {target}")


def _healthcheck_port(service: str) -> int:
    test = " ".join(SERVICES[service]["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", test)
    assert match, f"{service}: an HTTP health check"
    return int(match.group(1))


def test_the_deployment_has_every_part_the_readme_names() -> None:
    assert set(SERVICES) >= {
        "postgres",
        "redis",
        "sim",
        "migrate",
        "api",
        "worker",
        "proxy",
        "prometheus",
        "grafana",
    }
    assert set(JOBGATE_SERVICES) == {"sim", "migrate", "api", "worker"}


def test_every_dependency_exists_and_is_waited_on_by_what_it_can_report() -> None:
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on") or {}
        conditions = depends_on if isinstance(depends_on, dict) else {key: {} for key in depends_on}
        for dependency, spec in conditions.items():
            assert dependency in SERVICES, f"{name} depends on an unknown service {dependency}"
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits for {dependency} to be healthy"
            elif condition == "service_completed_successfully":
                assert SERVICES[dependency].get("restart") == "no", f"{dependency} runs once"


def test_every_long_running_jobgate_process_has_a_health_check() -> None:
    for name in ("api", "worker"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD"


def test_every_file_it_mounts_is_in_the_checkout_and_every_volume_is_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{name}: volume {source} is not declared"
        for source, _target in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which the checkout does not have"


def test_every_jobgate_command_parses_with_the_cli() -> None:
    for name in JOBGATE_SERVICES:
        argv = command(SERVICES[name])[1:]
        if argv[0] == "sim":
            build_sim_parser().parse_args(argv[1:])
        else:
            assert argv[0] not in PASSTHROUGH
            build_parser().parse_args(argv)


def test_every_jobgate_variable_is_a_setting_with_a_valid_value() -> None:
    fields = {f"JOBGATE_{name.upper()}" for name in Settings.model_fields}
    for name in JOBGATE_SERVICES:
        values = environment(SERVICES[name])
        jobgate_values = {
            variable: value for variable, value in values.items() if variable.startswith("JOBGATE_")
        }
        assert set(jobgate_values) <= fields, f"{name}: not settings: {set(jobgate_values) - fields}"
        Settings.model_validate(
            {variable.removeprefix("JOBGATE_").lower(): value for variable, value in jobgate_values.items()}
        )
        others = set(values) - set(jobgate_values)
        # Provider keys (named by the config's api_key_env) and uvicorn's trusted proxies.
        assert others <= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FORWARDED_ALLOW_IPS"}, f"{name}: {others}"


def test_the_database_and_redis_urls_name_their_services() -> None:
    values = environment(SERVICES["api"])
    database = urlsplit(values["JOBGATE_DATABASE_URL"])
    postgres = environment(SERVICES["postgres"])
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert (database.username, database.password, database.path) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        f"/{postgres['POSTGRES_DB']}",
    )
    redis = urlsplit(values["JOBGATE_REDIS_URL"])
    assert (redis.hostname, redis.port) == ("redis", 6379)


def test_the_proxy_prometheus_and_health_checks_use_the_ports_the_commands_listen_on() -> None:
    api_port = int(option(command(SERVICES["api"]), "--port"))
    worker_port = int(option(command(SERVICES["worker"]), "--metrics-port"))
    assert option(command(SERVICES["api"]), "--host") == "0.0.0.0"
    assert option(command(SERVICES["worker"]), "--metrics-host") == "0.0.0.0"
    assert str(api_port) in SERVICES["api"]["expose"] and str(worker_port) in SERVICES["worker"]["expose"]
    assert _healthcheck_port("api") == api_port and _healthcheck_port("worker") == worker_port
    assert "ports" not in SERVICES["api"], "replicas behind the proxy publish no host port"

    caddyfile = _mounted("proxy", "/etc/caddy/Caddyfile").read_text()
    assert re.search(rf"dynamic a api {api_port}\b", caddyfile), "the proxy finds every API replica by DNS"
    listen = re.search(r"^:(\d+) \{", caddyfile, re.M)
    assert listen and SERVICES["proxy"]["ports"] == [f"{listen.group(1)}:{listen.group(1)}"]

    prometheus = yaml.safe_load(_mounted("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    discovered = {
        (dns_name, sd["port"])
        for job in prometheus["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for dns_name in sd["names"]
    }
    assert discovered == {("api", api_port), ("worker", worker_port)}
    assert all(sd["type"] == "A" for job in prometheus["scrape_configs"] for sd in job["dns_sd_configs"])


def test_the_mounted_config_is_the_shipped_example_on_the_sim_service() -> None:
    config_at = environment(SERVICES["api"])["JOBGATE_CONFIG"]
    for name in ("api", "worker"):
        assert environment(SERVICES[name])["JOBGATE_CONFIG"] == config_at
        assert _mounted(name, config_at) == EXAMPLE_CONFIG.resolve()
    config = load_config(EXAMPLE_CONFIG)
    sim_port = int(option(command(SERVICES["sim"]), "--port"))
    for name, provider in config.providers.items():
        url = urlsplit(provider.base_url or "")
        assert (url.hostname, url.port) == ("sim", sim_port), f"providers.{name} is the sim service"
    assert "fast" in config.models


def test_the_real_provider_example_in_the_config_header_loads_and_its_keys_are_passed_on() -> None:
    commented = [line[4:] for line in EXAMPLE_CONFIG.read_text().splitlines() if line.startswith("#   ")]
    example = yaml.safe_load("\n".join(commented))
    example["pricing"] = yaml.safe_load(EXAMPLE_CONFIG.read_text())["pricing"]
    config = parse_config(example, source="jobgate.example.yaml header")
    for name in ("api", "worker"):
        passed = environment(SERVICES[name])
        for provider in config.providers.values():
            assert provider.api_key_env in passed


def test_env_example_sets_only_what_the_compose_file_reads() -> None:
    assigned = [
        line.split("=", 1)[0]
        for line in (PROJECT_ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert set(assigned) <= compose_variables()
    assert "CONFIG_FILE" in assigned and not any(name.startswith("JOBGATE_") for name in compose_variables())


def test_postgres_connections_at_the_readme_scale_stay_under_its_limit() -> None:
    limit = int(option(command(SERVICES["postgres"]), "-c").split("=")[1])
    api_settings = Settings.model_validate(
        {
            k.removeprefix("JOBGATE_").lower(): v
            for k, v in environment(SERVICES["api"]).items()
            if k.startswith("JOBGATE_")
        }
    )
    # An API process: its pool, and the job runtime of its sync calls; a worker process: fixed pools.
    per_api_process = api_settings.db_pool_size + api_settings.db_max_overflow + JOB_SQL_CONNECTIONS
    per_worker_process = JOB_SQL_CONNECTIONS + AUX_SQL_CONNECTIONS
    per_api = per_api_process * int(option(command(SERVICES["api"]), "--workers"))
    per_worker = per_worker_process * int(option(command(SERVICES["worker"]), "--processes"))

    readme = (PROJECT_ROOT / "README.md").read_text()
    scales = [
        {"api": SERVICES["api"]["deploy"]["replicas"], "worker": SERVICES["worker"]["deploy"]["replicas"]}
    ]
    for line in re.findall(r"docker compose up[^\n`]*--scale[^\n`]*", readme):
        scale = dict(scales[0])
        scale.update({name: int(n) for name, n in re.findall(r"--scale (\w+)=(\d+)", line)})
        scales.append(scale)
    assert len(scales) > 1, "README shows a scale"
    for scale in scales:
        total = scale["api"] * per_api + scale["worker"] * per_worker
        # Room for one-off commands (`jobgate keys create`, psql) beside the deployment.
        assert total <= limit - 10, f"{scale}: {total} connections of {limit}"
        assert f"= {total}" in readme, f"README states the sum at {scale}: {total}"


def _exported_metric_names() -> set[str]:
    names = set()
    for value in vars(core.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
                names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    fleet_gauges = (PROJECT_ROOT / "api" / "metrics.py").read_text()
    names |= set(re.findall(r'GaugeMetricFamily\(\s*"(jobgate_\w+)"', fleet_gauges))
    return names


def test_grafana_is_provisioned_with_prometheus_and_the_jobgate_dashboard() -> None:
    provisioning = _mounted("grafana", "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    [datasource] = datasources["datasources"]
    prometheus_port = SERVICES["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"

    providers = yaml.safe_load((provisioning / "dashboards" / "jobgate.yaml").read_text())["providers"]
    [dashboards_at] = [provider["options"]["path"] for provider in providers]
    dashboard_path = _mounted("grafana", dashboards_at) / "jobgate.json"
    home = environment(SERVICES["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_at}/jobgate.json"
    dashboard = json.loads(dashboard_path.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert all(panel["datasource"]["uid"] == datasource["uid"] for panel in panels)
    assert all(panel["targets"] for panel in panels)


@pytest.fixture(scope="module")
def dashboard_queries() -> list[str]:
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "jobgate.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboards_queries_use_only_metric_names_jobgate_exports(dashboard_queries: list[str]) -> None:
    exported = _exported_metric_names()
    used = {name for expr in dashboard_queries for name in re.findall(r"\bjobgate_\w+", expr)}
    assert used and used <= exported, f"not exported: {used - exported}"


@pytest.mark.parametrize(
    ("topic", "metric"),
    [
        ("queue depth", "jobgate_queue_depth"),
        ("queue age", "jobgate_oldest_queued_age_seconds"),
        ("jobs by state", "jobgate_jobs_finished_total"),
        ("upstream calls", "jobgate_upstream_requests_total"),
        ("latency by provider", "jobgate_upstream_latency_seconds_bucket"),
        ("429s by provider", 'outcome="rate_limited"'),
        ("limiter headroom", "jobgate_limiter_headroom"),
        ("breaker state", "jobgate_breaker_state"),
        ("cache hits", "jobgate_cache_lookups_total"),
        ("webhook outcomes", "jobgate_webhook_deliveries_total"),
        ("cost", "jobgate_cost_usd_total"),
    ],
)
def test_the_dashboard_shows(topic: str, metric: str, dashboard_queries: list[str]) -> None:
    assert any(metric in expr for expr in dashboard_queries), f"no panel for {topic}"


def test_the_image_runs_as_an_ordinary_user_and_has_what_the_commands_import() -> None:
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user.split(":")[0] not in ("root", "0")
    assert not re.search(r"pip install[^\n]*(-e|--editable)\b", dockerfile)
    copied = {
        part.rstrip("/") for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M) for part in line.split()
    }
    for source in copied:
        assert (PROJECT_ROOT / source).exists(), f"COPY {source}"
    # The packages the commands import (bench runs from a checkout: README says so).
    assert {"core", "api", "workers", "jobgate", "sim", "migrations", "alembic.ini"} <= copied
    ignored = [
        line for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    ]
    assert ".env" in ignored, "provider keys never reach the build context"
    assert not [source for source in copied for pattern in ignored if fnmatch(source, pattern)]
