"""Checking a config file before it is deployed (`jobgate config check`): every problem at once.

Start-up (`core.config.load_config`, then `core.providers.build_providers`) stops at the first
bad key; an operator fixing a file wants them all. The schema is checked entry by entry with the
models start-up uses, so one entry's errors do not hide another's; then the rules that span
entries: targets name known providers, every target is priced or its provider free, Azure's
deployment rules, a placeholder URL left in, and on this machine each `api_key_env` set. Errors
are what start-up refuses or what would make jobgate misbehave (a URL that never answers);
warnings are what loads but is probably not meant (weights that no strategy reads, limits for a
model the provider never serves, an alias hiding a provider model of the same name, a price no
target uses). A file with no errors loads: the last check is start-up's own.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from core.config import (
    CacheConfig,
    GatewayConfig,
    ModelRoute,
    Price,
    ProviderConfig,
    Target,
    TenantLimits,
    parse_config,
)
from core.errors import ConfigError
from core.providers.azure import azure_deployments

Severity = Literal["error", "warning"]

# Each top-level section of the file and the model of one of its entries (`cache` is one model).
SECTIONS: Mapping[str, type[BaseModel]] = {
    "providers": ProviderConfig,
    "models": ModelRoute,
    "pricing": Price,
    "tenants": TenantLimits,
}
SINGLE_SECTIONS: Mapping[str, type[BaseModel]] = {"cache": CacheConfig}

# RFC 2606 reserves `.invalid`: a URL there is a placeholder (`jobgate config import` writes
# them where a LiteLLM file read the URL from the environment), and never answers.
PLACEHOLDER_DOMAIN = ".invalid"


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass
class CheckReport:
    """What `check_config` found in one file, and the config when it loads."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    config: GatewayConfig | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def check_config_file(path: Path, *, environ: Mapping[str, str] | None) -> CheckReport:
    """Check the YAML at `path`; `environ` is the environment the gateway will run in (None skips
    the checks of this machine: keys set, optional packages installed)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        return CheckReport(str(path), [Problem("(file)", f"cannot read config file: {exc.strerror}")])
    return check_config_text(text, source=str(path), environ=environ)


def check_config_text(text: str, *, source: str, environ: Mapping[str, str] | None) -> CheckReport:
    try:
        duplicates = list(_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader)))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return CheckReport(source, [Problem("(yaml)", f"not valid YAML: {exc}")])
    except RecursionError:
        return CheckReport(source, [Problem("(yaml)", "nested too deeply to read")])
    report = check_config(data, source=source, environ=environ)
    report.problems[:0] = duplicates
    if duplicates:
        report.config = None
    return report


def check_config(data: Any, *, source: str, environ: Mapping[str, str] | None) -> CheckReport:
    """Every problem of a config already read from YAML (see the module's docstring)."""
    report = CheckReport(source)
    if not isinstance(data, dict):
        report.problems.append(Problem("(top level)", "expected a mapping with 'providers' and 'models'"))
        return report
    problems = report.problems
    known = set(SECTIONS) | set(SINGLE_SECTIONS)
    for key in data:
        if key not in known:
            problems.append(Problem(str(key), f"unknown section (known: {', '.join(sorted(known))})"))
    if "providers" not in data:
        problems.append(Problem("providers", "required: at least one provider"))
    parsed = {name: _entries(data, name, model, problems) for name, model in SECTIONS.items()}
    for name, model in SINGLE_SECTIONS.items():
        if name in data:
            _validate(model, data[name], (name,), problems)
    # Every provider named in the file, valid or not: a target of an invalid one is not also
    # reported as naming an unknown provider, and its URLs and price are still checked.
    raw_providers = data.get("providers")
    declared = (
        {str(k): _mapping(v) for k, v in raw_providers.items()} if isinstance(raw_providers, dict) else {}
    )
    if raw_providers == {}:
        problems.append(Problem("providers", "none declared: no model can be served", "warning"))
    config = GatewayConfig.model_construct(
        providers=parsed["providers"], models=parsed["models"], pricing=parsed["pricing"]
    )
    problems.extend(_target_problems(config, declared))
    problems.extend(_azure_problems(config))
    problems.extend(_placeholder_problems(declared))
    problems.extend(_provider_problems(config, environ))
    problems.extend(_route_warnings(config))
    if not report.errors:
        # Start-up's own checks, last: anything they refuse that the rules above let through
        # is reported rather than left for the next deployment to find.
        try:
            report.config = parse_config(data, source=source)
            azure_deployments(report.config)
        except ConfigError as exc:
            problems.append(Problem("(start-up)", str(exc)))
            report.config = None
    return report


def _duplicate_keys(root: yaml.Node | None) -> Iterator[Problem]:
    """Keys given twice in one mapping: YAML keeps the last one without a word. Each node is
    visited once: an alias (`*name`) repeats a node, and may even hold itself."""
    visited: set[int] = set()
    stack: list[tuple[yaml.Node | None, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}.{i}") for i, item in reversed(list(enumerate(node.value)))]
        if not isinstance(node, yaml.MappingNode):
            continue
        seen: set[str] = set()
        children = []
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            where = f"{path}.{key}" if path else key
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key in seen:
                    line = key_node.start_mark.line + 1
                    yield Problem(where, f"given twice (again on line {line}); YAML keeps only the last")
                seen.add(key)
            children.append((value_node, where))
        stack += reversed(children)


def _validate(
    model: type[BaseModel], value: Any, loc: tuple[str, ...], problems: list[Problem]
) -> BaseModel | None:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        for error in exc.errors():
            key = ".".join((*loc, *(str(part) for part in error["loc"])))
            message = error["msg"]
            given = error.get("input")
            if error["type"] != "missing" and isinstance(given, str | int | float | bool):
                message += f" (got {given!r})"
            problems.append(Problem(key, message))
        return None


def _entries(data: dict[Any, Any], section: str, model: type[BaseModel], problems: list[Problem]) -> Any:
    """The entries of one section that validate, each checked on its own."""
    if section not in data:
        return {}
    raw = data[section]
    if not isinstance(raw, dict):
        got = "nothing" if raw is None else f"a {type(raw).__name__}"
        problems.append(Problem(section, f"expected a mapping of names to entries, got {got}"))
        return {}
    good: dict[str, BaseModel] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            problems.append(Problem(f"{section}.{name}", "a name must be a string (quote it)"))
            continue
        entry = _validate(model, value, (section, name), problems)
        if entry is not None:
            good[name] = entry
    return good


def _target_problems(config: GatewayConfig, declared: Mapping[str, dict[Any, Any]]) -> Iterator[Problem]:
    """Targets name providers that exist, and each is priced or served by a free provider."""
    for alias, route in config.models.items():
        for i, target in enumerate(route.targets):
            key = f"models.{alias}.targets.{i}"
            if target.provider not in declared:
                known = ", ".join(sorted(declared)) or "none"
                yield Problem(f"{key}.provider", f"unknown provider {target.provider!r} (known: {known})")
                continue
            provider = config.providers.get(target.provider)
            free = provider.free if provider is not None else declared[target.provider].get("free") is True
            if free or config.price_for(target.provider, target.model):
                continue
            yield Problem(f"{key}.model", config.missing_price(target))


def _azure_problems(config: GatewayConfig) -> Iterator[Problem]:
    """Azure's deployment rules (`azure_deployments`), one provider at a time so that each
    provider's first problem is reported, not only the file's first. The other providers'
    targets stay in place (so keys keep their indices) as targets of a plain provider."""
    elsewhere = "(another provider)"
    for name in config.providers:
        models = {
            alias: ModelRoute.model_construct(
                targets=[
                    t if t.provider == name else Target.model_construct(provider=elsewhere, model=t.model)
                    for t in route.targets
                ]
            )
            for alias, route in config.models.items()
        }
        providers = {name: config.providers[name], elsewhere: ProviderConfig(kind="openai")}
        one = GatewayConfig.model_construct(providers=providers, models=models)
        try:
            azure_deployments(one)
        except ConfigError as exc:
            key, _, message = str(exc).partition(": ")
            yield Problem(key, message)


def _placeholder_problems(declared: Mapping[str, dict[Any, Any]]) -> Iterator[Problem]:
    for name, provider in declared.items():
        for field_name in ("base_url", "endpoint"):
            url = provider.get(field_name)
            host = (urlsplit(url).hostname or "") if isinstance(url, str) else ""
            if host.endswith(PLACEHOLDER_DOMAIN):
                yield Problem(
                    f"providers.{name}.{field_name}",
                    f"{url} is a placeholder (the {PLACEHOLDER_DOMAIN} domain never answers):"
                    " fill in the real URL",
                )


def _provider_problems(config: GatewayConfig, environ: Mapping[str, str] | None) -> Iterator[Problem]:
    served: dict[str, set[str]] = {name: set() for name in config.providers}
    deployments: dict[str, set[str]] = {name: set() for name in config.providers}
    for route in config.models.values():
        for target in route.targets:
            served.setdefault(target.provider, set()).add(target.model)
            deployments.setdefault(target.provider, set()).add(target.deployment or target.model)
    for name, provider in config.providers.items():
        for model in provider.models:
            if model not in served[name] and not (provider.kind == "azure" and model in deployments[name]):
                # Limits keyed by an Azure deployment's name are `_azure_problems`' to report.
                yield Problem(
                    f"providers.{name}.models.{model}",
                    f"no target of provider {name!r} serves {model!r}: these limits never apply",
                    "warning",
                )
        if environ is None:
            continue
        if provider.api_key_env is not None and not environ.get(provider.api_key_env):
            state = "is empty" if provider.api_key_env in environ else "is not set"
            yield Problem(
                f"providers.{name}.api_key_env", f"environment variable {provider.api_key_env} {state}"
            )
        if provider.entra_id and not _installed("azure.identity"):
            yield Problem(f"providers.{name}.entra_id", "needs azure-identity (pip install 'jobgate[azure]')")


def _route_warnings(config: GatewayConfig) -> Iterator[Problem]:
    """What loads but is probably not meant: weights, aliases hiding models, unused prices."""
    priced: set[str] = set()
    for alias, route in config.models.items():
        weighted = route.strategy == "weighted" and len(route.targets) > 1
        for i, target in enumerate(route.targets):
            key = f"models.{alias}.targets.{i}"
            priced.update((target.model, f"{target.provider}/{target.model}"))
            if weighted and "weight" not in target.model_fields_set:
                yield Problem(f"{key}.weight", "strategy weighted and no weight: it counts 1", "warning")
            elif route.strategy != "weighted" and "weight" in target.model_fields_set:
                yield Problem(
                    f"{key}.weight",
                    f"only strategy weighted reads weights (this alias is {route.strategy})",
                    "warning",
                )
        for other, other_route in config.models.items():
            hidden = [t for t in other_route.targets if t.model == alias and t not in route.targets]
            if other != alias and hidden:
                yield Problem(
                    f"models.{alias}",
                    f"also the model of models.{other}'s target at provider {hidden[0].provider!r}: a"
                    f" request for {alias!r} reaches this alias, never that target directly",
                    "warning",
                )
    for key in config.pricing:
        if key not in priced:
            yield Problem(f"pricing.{key}", "no target serves this model: the price is never used", "warning")


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
