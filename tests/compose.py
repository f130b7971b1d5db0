"""docker-compose.yml read as data, for the tests that check it where Docker cannot run.

`load_compose()` parses the file (YAML anchors and merge keys resolved); `environment`,
`command` and `bind_mounts` give a service's settings with `${VAR:-default}` interpolated as
`docker compose` does when no `.env` sets anything. `LocalDeployment` turns a service into a
process of this machine: the same command and environment, with the compose network's hosts
and ports replaced by 127.0.0.1 and free ports, and the database, Redis and config replaced by
a test's own.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.processes import PROJECT_ROOT, jobgate_env

COMPOSE_PATH = PROJECT_ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return compose


def interpolate(value: str) -> str:
    """`${VAR:-default}` → default, `${VAR}` → "" (no .env, nothing exported)."""
    return VARIABLE.sub(lambda match: match.group(2) or "", value)


def compose_variables() -> set[str]:
    """Every variable the compose file interpolates."""
    return {match.group(1) for match in VARIABLE.finditer(COMPOSE_PATH.read_text())}


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: interpolate(str(value)) for name, value in (service.get("environment") or {}).items()}


def command(service: dict[str, Any]) -> list[str]:
    return [interpolate(str(part)) for part in service.get("command") or []]


def option(argv: list[str], name: str) -> str:
    """The value after `name` in an argv."""
    return argv[argv.index(name) + 1]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path in the checkout, path in the container) of each bind mount."""
    mounts = []
    for volume in service.get("volumes") or []:
        source, target = interpolate(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((PROJECT_ROOT / source).resolve(), target))
    return mounts


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = [str(part) for part in service["healthcheck"]["test"]]
    assert test[0] == "CMD", "an exec-form health check (no shell in between)"
    return test[1:]


@dataclass
class LocalDeployment:
    """Compose services as local processes: `ports` maps each container port to a free one."""

    database_url: str
    redis_url: str
    redis_prefix: str
    config_path: Path
    ports: dict[int, int]
    temp_dir: Path
    compose: dict[str, Any] = field(default_factory=load_compose)

    def _local(self, text: str) -> str:
        """Container addresses and ports as this machine's."""
        text = text.replace("0.0.0.0", "127.0.0.1")
        for container_port, local_port in self.ports.items():
            text = re.sub(rf"(?<![\d.]){container_port}(?!\d)", str(local_port), text)
        return text

    def argv(self, name: str) -> list[str]:
        """The service's command, run by this interpreter."""
        argv = [self._local(part) for part in command(self.compose["services"][name])]
        assert argv[0] == "jobgate", f"{name}: a jobgate command"
        return [sys.executable, "-m", "jobgate", *argv[1:]]

    def healthcheck(self, name: str) -> list[str]:
        argv = [self._local(part) for part in healthcheck_argv(self.compose["services"][name])]
        assert argv[0] == "python"
        return [sys.executable, *argv[1:]]

    def env(self, name: str) -> dict[str, str]:
        """The service's environment, the database, Redis and config being the test's own."""
        values = environment(self.compose["services"][name])
        own = {
            "JOBGATE_DATABASE_URL": self.database_url,
            "JOBGATE_REDIS_URL": self.redis_url,
            "JOBGATE_CONFIG": str(self.config_path),
        }
        for variable, value in own.items():
            assert variable in values, f"{name} sets {variable}"
            values[variable] = value
        env = jobgate_env(redis_prefix=self.redis_prefix)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["TMPDIR"] = str(self.temp_dir)
        env.update(values)
        return env
