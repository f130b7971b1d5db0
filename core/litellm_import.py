"""Turning a LiteLLM proxy config into a jobgate config (`jobgate config import`).

LiteLLM's `model_list` holds deployments: `{model_name, litellm_params: {model: "<provider>/<model>",
api_key, api_base, api_version, rpm, tpm, weight, input_cost_per_token, ...}, model_info}`. The
deployments sharing a `model_name` become the targets of the alias of that name; each distinct
upstream one provider (`core.litellm_upstreams`); a deployment's `rpm`/`tpm` the per-model limits
of its provider (`providers.<p>.models.<model>`); its costs per token a price per million.
`router_settings.routing_strategy` becomes the strategy of each alias with several targets,
`fallbacks` the targets of the named aliases after an alias's own, `model_group_alias` aliases
that copy another's route, `litellm_settings.cache` the cache default.

The file is data: it is read with `yaml.safe_load` and nothing in it is evaluated or looked up.
A deployment jobgate cannot serve (embeddings, images, a provider jobgate has no kind for, a
wildcard route) is skipped and named in `warnings`, as is every setting not carried over (by
name, never its value); what the operator must still give (a price, a URL LiteLLM read from the
environment) is listed in `fill_in`. A file that is not a LiteLLM config, or has a malformed
entry, yields `errors` and no config.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from core.litellm_upstreams import UPSTREAMS, Notes, Provider, Upstreams, inferred_prefix

# LiteLLM's `routing_strategy` (how it picks among one model_name's deployments) → jobgate's.
STRATEGIES: Mapping[str, str] = {
    "simple-shuffle": "weighted",  # LiteLLM's default
    "least-busy": "least_busy",
    # Lowest use of its rpm/tpm this minute: the most limiter headroom, which least_busy picks.
    "usage-based-routing": "least_busy",
    "usage-based-routing-v2": "least_busy",
    "latency-based-routing": "lowest_latency",
    "cost-based-routing": "lowest_cost",
}

# What this converter reads; any other key is named in a warning (never its value).
_READ_PARAMS = {
    "model", "custom_llm_provider", "api_key", "api_base", "api_version", "rpm", "tpm", "weight",
    "order", "timeout", "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
}  # fmt: skip
_READ_INFO = {
    "id", "mode", "base_model", "max_output_tokens",
    "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
}  # fmt: skip
_READ_SETTINGS = {
    "router_settings": {"routing_strategy", "fallbacks", "model_group_alias"},
    "litellm_settings": {"fallbacks", "cache", "cache_params", "request_timeout"},
}
_OTHER_FALLBACKS = ("context_window_fallbacks", "content_policy_fallbacks", "default_fallbacks")
# Model names LiteLLM serves on endpoints jobgate does not have (embeddings, images, audio).
_NOT_CHAT = re.compile(r"embed|dall-e|gpt-image|whisper|tts|moderation|rerank", re.IGNORECASE)
_COSTS = {
    "input_per_mtok": "input_cost_per_token",
    "output_per_mtok": "output_cost_per_token",
    "cached_input_per_mtok": "cache_read_input_token_cost",
}
_MILLION = Decimal(1_000_000)


@dataclass
class ImportResult(Notes):
    """The jobgate config (as its YAML holds it), or the `errors` that prevented it."""

    config: dict[str, Any] | None = None
    # Every variable the config's providers read their keys from.
    env_vars: list[str] = field(default_factory=list)


@dataclass
class _Target:
    provider: Provider
    model: str
    deployment: str | None
    weight: float | None
    order: float
    price: dict[str, Decimal] | None
    max_output_tokens: int | None
    # This deployment's own rpm and tpm (its provider's per-model limits may hold another's).
    limits: dict[str, float]


def import_litellm_text(text: str) -> ImportResult:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return ImportResult(errors=[f"not valid YAML: {exc}"])
    except RecursionError:
        return ImportResult(errors=["not valid YAML: nested too deeply to read"])
    return import_litellm(data)


def import_litellm(data: Any) -> ImportResult:
    """Convert a LiteLLM proxy config read from YAML (see the module's docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("model_list"), list) or not data["model_list"]:
        return ImportResult(errors=["not a LiteLLM proxy config: no model_list (a list of deployments)"])
    return _Converter(data).run()


class _Converter:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.result = ImportResult()
        self.upstreams = Upstreams(self.result)
        self.groups: dict[str, list[_Target]] = {}
        self.router = _mapping(data.get("router_settings"))
        self.settings = _mapping(data.get("litellm_settings"))

    def run(self) -> ImportResult:
        for i, entry in enumerate(self.data["model_list"]):
            self._deployment(i, entry)
        result = self.result
        if not result.errors and not self.groups:
            result.errors.append("no model_list entry is a chat model jobgate can serve (see the warnings)")
        if result.errors:
            return result
        for section in sorted(set(self.data) - {"model_list", *_READ_SETTINGS}, key=str):
            result.warnings.append(
                f"{section}: not carried over (jobgate's settings, keys and tenants replace it)"
            )
        for section, read in _READ_SETTINGS.items():
            unread = sorted(map(str, set(_mapping(self.data.get(section))) - read - set(_OTHER_FALLBACKS)))
            if unread:
                result.warnings.append(f"{section}: not carried over: {', '.join(unread)}")
        models = self._routes()
        providers = self.upstreams.providers()
        default_timeout_s = _number(self.settings.get("request_timeout"))
        result.config = {
            "providers": {p.name: p.config(default_timeout_s) for p in providers},
            "models": models,
            "pricing": self._pricing(),
            "cache": self._cache(),
        }
        result.env_vars = sorted({p.settings["api_key_env"] for p in providers} - {None})
        return result

    # --- One deployment ------------------------------------------------------------------------

    def _deployment(self, i: int, entry: Any) -> None:
        where = f"model_list.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            self.result.errors.append(f"{where}: needs model_name (a string) and litellm_params")
            return
        alias = entry["model_name"]
        where = f"{where} ({alias})"
        params, info = entry.get("litellm_params"), _mapping(entry.get("model_info"))
        if not isinstance(params, dict) or not isinstance(params.get("model"), str) or not params["model"]:
            self.result.errors.append(f"{where}: litellm_params.model is missing or not a string")
            return
        prefix, slash, model = params["model"].partition("/")
        if isinstance(params.get("custom_llm_provider"), str):
            prefix = params["custom_llm_provider"]
            model = params["model"].removeprefix(f"{prefix}/")
        elif not slash:
            prefix, model = inferred_prefix(prefix), prefix
        skip = _unservable(alias, prefix, model, info)
        if skip:
            self.result.warnings.append(f"{where}: skipped, {skip}")
            return
        unread = sorted(map(str, set(params) - _READ_PARAMS)) + [
            f"model_info.{k}" for k in info if k not in _READ_INFO
        ]
        if unread:
            self.result.warnings.append(f"{where}: not carried over: {', '.join(unread)}")
        provider = self.upstreams.provider_for(where, prefix, params)
        if provider is None:
            return
        target_model, deployment = model, None
        if prefix == "azure":
            # LiteLLM prices an Azure deployment as its `base_model`; jobgate prices the target's model.
            base_model = info.get("base_model")
            if isinstance(base_model, str) and base_model:
                target_model = base_model.removeprefix("azure/")
            deployment = model
            provider = self.upstreams.azure_slot(provider, target_model, deployment)
        # rpm and tpm sit in litellm_params, or beside them in older files.
        limits = {k: v for k in ("rpm", "tpm") if (v := _number(params.get(k, entry.get(k)))) and v >= 1}
        self._limits(where, provider, target_model, limits)
        timeout = _number(params.get("timeout"))
        if timeout:
            provider.timeout_s = max(provider.timeout_s or 0, timeout)
        order = params.get("order")
        max_output = _number(info.get("max_output_tokens"))
        target = _Target(
            provider,
            target_model,
            deployment if deployment != target_model else None,
            _number(params.get("weight")),
            float(order) if isinstance(order, int | float) else float("inf"),
            self._price(where, {**info, **params}),
            int(max_output) if max_output else None,
            limits,
        )
        group = self.groups.setdefault(alias, [])
        if any(_same(t, target) for t in group):
            self.result.warnings.append(
                f"{where}: skipped, the same upstream and model as another {alias!r} entry"
            )
            return
        group.append(target)

    def _limits(self, where: str, provider: Provider, model: str, limits: dict[str, float]) -> None:
        """The deployment's limits become its provider's for its model; two deployments of one
        upstream model (one budget upstream) keep the lower."""
        known = provider.limits.get(model, {})
        for name, value in limits.items():
            if name in known and known[name] != int(value):
                self.result.warnings.append(
                    f"{where}: {name} {int(value)} and {known[name]} for {provider.name}/{model}:"
                    " kept the lower"
                )
            known[name] = min(int(value), known.get(name, int(value)))
            provider.limits[model] = known

    def _price(self, where: str, given: dict[str, Any]) -> dict[str, Decimal] | None:
        price: dict[str, Decimal] = {}
        for ours, theirs in _COSTS.items():
            if theirs in given:
                try:
                    price[ours] = (Decimal(str(given[theirs])) * _MILLION).normalize()
                except InvalidOperation:
                    self.result.warnings.append(f"{where}: {theirs} is not a number; not carried over")
        if any(str(k).startswith("input_cost_per_") and k not in _COSTS.values() for k in given):
            self.result.warnings.append(f"{where}: priced per second or per character: not carried over")
        return price or None

    # --- The whole file ----------------------------------------------------------------------------

    def _routes(self) -> dict[str, Any]:
        strategy_name = self.router.get("routing_strategy") or "simple-shuffle"
        strategy = STRATEGIES.get(str(strategy_name))
        if strategy is None:
            self.result.warnings.append(
                f"router_settings.routing_strategy {strategy_name!r}: no match; fallback used"
            )
        routes = {alias: sorted(targets, key=lambda t: t.order) for alias, targets in self.groups.items()}
        extra = self._fallbacks(routes)
        models: dict[str, Any] = {}
        for alias, own in routes.items():
            chosen = strategy if strategy is not None and len(own) > 1 else "fallback"
            weights: list[float | None] = list(_weights(own)) if chosen == "weighted" else [None] * len(own)
            targets = [_target(t, w) for t, w in zip(own, weights, strict=True)]
            backup: float | None = None
            if extra.get(alias) and chosen != "fallback":
                # jobgate has no fallback-only targets: under a strategy they may be picked first,
                # so under `weighted` they get a small share (LiteLLM gives them none).
                backup = min(w for w in weights if w) / 100 if chosen == "weighted" else None
                how = f"with weight {backup} each" if backup else "as equals"
                self.result.warnings.append(
                    f"models.{alias}: its fallbacks join its targets {how}:"
                    f" strategy {chosen} may pick them first"
                )
            targets += [_target(t, backup) for t in extra.get(alias, [])]
            models[alias] = ({"strategy": chosen} if chosen != "fallback" else {}) | {"targets": targets}
        self._group_aliases(models)
        return models

    def _fallbacks(self, routes: dict[str, list[_Target]]) -> dict[str, list[_Target]]:
        """LiteLLM's `fallbacks` (`[{alias: [other aliases]}]`): the other aliases' own targets,
        after the alias's own."""
        extra: dict[str, list[_Target]] = {}
        for where, section in (("router_settings", self.router), ("litellm_settings", self.settings)):
            for kind in _OTHER_FALLBACKS:
                if section.get(kind):
                    self.result.warnings.append(f"{where}.{kind}: not carried over (only fallbacks are)")
            rules = section.get("fallbacks") or []
            for rule in rules if isinstance(rules, list) else [rules]:
                for alias, backups in _mapping(rule).items():
                    for backup in backups if isinstance(backups, list) else [backups]:
                        if not isinstance(backup, str) or alias not in routes or backup not in routes:
                            missing = backup if alias in routes else alias
                            self.result.warnings.append(
                                f"{where}.fallbacks: {alias} -> {backup}:"
                                f" {missing!r} is not an imported model"
                            )
                            continue
                        chain = extra.setdefault(alias, [])
                        seen = routes[alias] + chain
                        chain += [t for t in routes[backup] if not any(_same(t, s) for s in seen)]
        return extra

    def _group_aliases(self, models: dict[str, Any]) -> None:
        """`model_group_alias: {name: group}` (or `{name: {model: group}}`): another name for a route."""
        for alias, group in _mapping(self.router.get("model_group_alias")).items():
            target = group.get("model") if isinstance(group, dict) else group
            if alias in models or not isinstance(target, str) or target not in models:
                why = "already a model" if alias in models else f"{target!r} is not an imported model"
                self.result.warnings.append(f"router_settings.model_group_alias.{alias}: {why}; skipped")
                continue
            models[str(alias)] = copy.deepcopy(models[target])

    def _pricing(self) -> dict[str, Any]:
        """`pricing.<model>` at the price most of the model's providers charge, and
        `pricing."<provider>/<model>"` for each provider charging otherwise."""
        prices: dict[str, dict[str, tuple[tuple[str, Decimal], ...] | None]] = {}
        for targets in self.groups.values():
            for t in targets:
                known = prices.setdefault(t.model, {})
                if not t.provider.settings.get("free") and known.get(t.provider.name) is None:
                    known[t.provider.name] = tuple(sorted(t.price.items())) if t.price else None
        pricing: dict[str, Any] = {}
        for model, by_provider in prices.items():
            given = [price for price in by_provider.values() if price is not None]
            common = max(given, key=given.count) if given else None
            if common is not None:
                pricing[model] = {k: _plain(v) for k, v in common}
            for provider, price in by_provider.items():
                if price is not None and price != common:
                    pricing[f"{provider}/{model}"] = {k: _plain(v) for k, v in price}
                elif price is None:
                    # A model named with a slash (OpenRouter's) is priced per provider: as
                    # `pricing.<model>` it would read as another provider's price.
                    key = model if common is None and "/" not in model else f"{provider}/{model}"
                    until = (
                        "; none in the file" if common is None else f"; until then pricing.{model} applies"
                    )
                    line = f"pricing.{key}: input_per_mtok, output_per_mtok (USD per million tokens{until})"
                    if line not in self.result.fill_in:
                        self.result.fill_in.append(line)
        return dict(sorted(pricing.items()))

    def _cache(self) -> dict[str, Any]:
        """LiteLLM caches only when told to, jobgate by default: keep LiteLLM's choice."""
        if self.settings.get("cache") is not True:
            return {"default": False}
        ttl = _number(_mapping(self.settings.get("cache_params")).get("ttl"))
        return {"default": True, "ttl_s": int(ttl)} if ttl and ttl >= 1 else {"default": True}


def _unservable(alias: str, prefix: str, model: str, info: dict[str, Any]) -> str | None:
    """Why jobgate cannot serve this deployment, or None."""
    if "*" in alias or "*" in model:
        return "a wildcard route (jobgate routes the model names its config lists)"
    mode = info.get("mode")
    named = _NOT_CHAT.search(model) or _NOT_CHAT.search(alias)
    if (mode is not None and mode != "chat") or named or prefix.startswith("text-completion"):
        return f"not a chat model ({mode or model or alias}): jobgate serves chat completions"
    if prefix not in UPSTREAMS:
        return f"provider {prefix!r} has no jobgate kind (known: {', '.join(sorted(UPSTREAMS))})"
    if not model:
        return f"no model after {prefix}/"
    return None


def _target(target: _Target, weight: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"provider": target.provider.name, "model": target.model}
    if target.deployment is not None:
        out["deployment"] = target.deployment
    if target.max_output_tokens is not None:
        out["max_output_tokens"] = target.max_output_tokens
    if weight is not None:
        out["weight"] = _plain(weight)
    return out


def _weights(targets: list[_Target]) -> list[float]:
    """simple-shuffle draws by `weight`, else by `rpm`, else by `tpm`, else evenly; a target
    without the figure the others have counts 1 (jobgate's weights are positive)."""
    for figure in ("weight", "rpm", "tpm"):
        values = [t.weight if figure == "weight" else t.limits.get(figure) for t in targets]
        if any(values):
            return [float(v) if v else 1.0 for v in values]
    return [1.0] * len(targets)


def _same(a: _Target, b: _Target) -> bool:
    return a.provider is b.provider and a.model == b.model


def _plain(value: float | Decimal) -> int | float:
    """A number as an operator writes it: 10, not 10.0."""
    return int(value) if value == int(value) else float(value)


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A positive number from the file, else None (YAML's true and false are not numbers)."""
    positive = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if positive else None


class _Dumper(yaml.SafeDumper):
    """No anchors: a route two aliases share is written out twice, as an operator would."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_config(result: ImportResult, *, source: str) -> str:
    """The converted config as YAML, headed by what it needs before start-up."""
    lines = [f"# Converted from {source} by `jobgate config import`; check it with `jobgate config check`."]
    if result.env_vars:
        lines.append(f"# Keys are read from the environment: {', '.join(result.env_vars)}.")
    if result.fill_in:
        lines.append("# Fill in before start-up:")
        lines += [f"#   {item}" for item in result.fill_in]
    body = yaml.dump(result.config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(lines) + "\n" + body
