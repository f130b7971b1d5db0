"""The providers / models / pricing config (one YAML file, DESIGN.md "Providers and routes").

Loaded once per process. A bad file fails start-up with a `ConfigError` naming the key,
never a traceback. Secrets are not in the file: a provider names the environment variable
that holds its key (`api_key_env`), read here when the config is loaded.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError

DEFAULT_SIM_URL = "http://127.0.0.1:8001"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BreakerConfig(_Strict):
    failures: int = Field(default=5, ge=1)
    window_s: float = Field(default=60, gt=0)
    cooldown_s: float = Field(default=60, gt=0)


class ModelLimits(_Strict):
    """A model's own budget inside its provider (OpenAI limits each model separately)."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class ProviderConfig(_Strict):
    kind: Literal["openai", "anthropic", "azure", "gemini"]
    base_url: str | None = None
    api_key_env: str | None = None
    # Kind azure: the resource's endpoint (`https://NAME.openai.azure.com`), the API version every
    # call names (`?api-version=`), and a Microsoft Entra ID token instead of a key (`[azure]` extra).
    endpoint: str | None = None
    api_version: str | None = None
    entra_id: bool = False
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=60, gt=0)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    # Its models cost nothing (a self-hosted server, the simulated upstream): they need no price.
    free: bool = False
    # Per-model limits (`providers.<p>.models.<model>: {rpm, tpm}`), beside the provider's own.
    models: dict[str, ModelLimits] = Field(default_factory=dict)

    def pause_scope(self, provider: str, model: str) -> str:
        """What a 429 or a spent `x-ratelimit-*` budget pauses: the model alone when it has
        limits of its own (its budget is the one spent), else the whole provider."""
        return f"{provider}/{model}" if model in self.models else provider

    @model_validator(mode="after")
    def _azure_fields_only_for_azure(self) -> ProviderConfig:
        if self.kind != "azure":
            given = [name for name in ("endpoint", "api_version", "entra_id") if getattr(self, name)]
            if given:
                raise ValueError(f"{', '.join(given)}: only for kind azure")
            return self
        missing = [name for name in ("endpoint", "api_version") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"kind azure needs {' and '.join(missing)}")
        if self.base_url is not None:
            raise ValueError("kind azure takes `endpoint` (https://NAME.openai.azure.com), not base_url")
        if self.entra_id and self.api_key_env is not None:
            raise ValueError("entra_id and api_key_env: an azure provider uses one or the other")
        return self

    def api_key(self) -> str:
        """The key from the environment; providers that need none (the sim) get a placeholder."""
        if self.api_key_env is None:
            return "jobgate-no-key"
        return os.environ.get(self.api_key_env, "")


# A target's longest answer when its config does not say (`max_output_tokens`): requests
# asking for more are refused at submission, so no reservation is absurd.
DEFAULT_MAX_OUTPUT_TOKENS = 32_768


class Target(_Strict):
    provider: str
    model: str
    # Kind azure: the deployment that serves `model` (default: a deployment named as the model).
    deployment: str | None = None
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1)
    # Its share of the alias's traffic under `strategy: weighted`.
    weight: float = Field(default=1.0, gt=0)


Strategy = Literal["fallback", "weighted", "least_busy", "lowest_latency", "lowest_cost"]


class ModelRoute(_Strict):
    """An alias: its targets, and how a job's first choice among them is made (the others
    follow in the listed order, as fallbacks on failure, an open breaker or booked budget)."""

    targets: list[Target] = Field(min_length=1)
    strategy: Strategy = "fallback"


class Price(_Strict):
    input_per_mtok: Decimal = Decimal(0)
    output_per_mtok: Decimal = Decimal(0)
    # Prompt-cache reads (OpenAI `cached_tokens`, Anthropic cache reads) and writes (Anthropic
    # cache creation); unset, they cost the input price.
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None


class CacheConfig(_Strict):
    default: bool = True
    ttl_s: int = Field(default=3600, ge=1)


class TenantLimits(_Strict):
    """A tenant's policy as the config file seeds it; the `tenants` table overrides it field by
    field (core/tenancy.py), so operators change it at run time without a restart."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget_usd_day: Decimal | None = Field(default=None, ge=0)
    budget_usd_month: Decimal | None = Field(default=None, ge=0)
    # Weight in fair sharing of a provider's budget between competing tenants.
    share: float = Field(default=1.0, gt=0)
    shared_cache: bool = False
    retention_days: int | None = Field(default=None, ge=1)


class GatewayConfig(_Strict):
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    pricing: dict[str, Price] = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    tenants: dict[str, TenantLimits] = Field(default_factory=lambda: {"default": TenantLimits()})

    @model_validator(mode="after")
    def _targets_name_known_providers(self) -> GatewayConfig:
        for alias, route in self.models.items():
            for i, target in enumerate(route.targets):
                if target.provider not in self.providers:
                    raise ValueError(
                        f"models.{alias}.targets.{i}.provider: unknown provider {target.provider!r}"
                        f" (known: {', '.join(sorted(self.providers))})"
                    )
                if (
                    self.price_for(target.provider, target.model) is None
                    and not self.providers[target.provider].free
                ):
                    # Budgets and usage would count it as free without a word.
                    raise ValueError(f"models.{alias}.targets.{i}.model: {self.missing_price(target)}")
        return self

    def known_models(self) -> list[str]:
        """Route aliases first, then every provider model named in a target."""
        names = list(self.models)
        for route in self.models.values():
            for target in route.targets:
                if target.model not in names:
                    names.append(target.model)
        return names

    def targets_for(self, model: str) -> list[Target] | None:
        """The ordered targets for a model name, or None if the name is unknown."""
        if model in self.models:
            return list(self.models[model].targets)
        for route in self.models.values():
            for target in route.targets:
                if target.model == model:
                    return [target]
        return None

    def price_for(self, provider: str, model: str) -> Price | None:
        """The price of `model` at `provider`: `pricing."provider/model"` where two providers
        serving one model charge differently, else `pricing.model`.

        A model name may hold a slash itself (OpenRouter's `openai/gpt-4o`). A key whose part
        before the first slash names a configured provider is that provider's: so with a
        provider `openai` configured, `pricing."openai/gpt-4o"` prices provider openai's
        `gpt-4o` and never OpenRouter's `openai/gpt-4o`, which then needs
        `pricing."openrouter/openai/gpt-4o"` (start-up says so rather than bill one at the
        other's price)."""
        qualified = self.pricing.get(f"{provider}/{model}")
        if qualified is not None:
            return qualified
        if self._bare_key_owner(model) not in (None, provider):
            return None
        return self.pricing.get(model)

    def _bare_key_owner(self, model: str) -> str | None:
        """The configured provider that `pricing.<model>` belongs to when the model's name
        starts with `<provider>/`, else None (the key is the model's own)."""
        owner, slash, _ = model.partition("/")
        return owner if slash and owner in self.providers else None

    def missing_price(self, target: Target) -> str:
        """What to add for a target that has no price (see `price_for` on slashed names)."""
        keys = f'pricing."{target.provider}/{target.model}"'
        if self._bare_key_owner(target.model) in (None, target.provider):
            keys = f"pricing.{target.model} or {keys}"
        return (
            f"no price for {target.model!r}; add {keys} (input_per_mtok, output_per_mtok; 0 if it is"
            f" free), or mark provider {target.provider!r} `free: true`"
        )

    def output_limit(self, model: str) -> int:
        """The longest answer any target of `model` may give (`max_output_tokens`)."""
        return max(
            (t.max_output_tokens for t in self.targets_for(model) or []), default=DEFAULT_MAX_OUTPUT_TOKENS
        )

    def tenant_limits(self, tenant_name: str) -> TenantLimits:
        return self.tenants.get(tenant_name) or self.tenants.get("default") or TenantLimits()


def dev_config_dict(sim_url: str = DEFAULT_SIM_URL) -> dict[str, Any]:
    """The built-in config: everything served by the simulated upstream at `sim_url`."""
    return {
        "providers": {
            "sim-openai": {"kind": "openai", "base_url": f"{sim_url}/v1", "rpm": 6000, "tpm": 2_000_000},
            "sim-anthropic": {"kind": "anthropic", "base_url": sim_url, "rpm": 6000, "tpm": 2_000_000},
        },
        "models": {
            "fast": {
                "targets": [
                    {"provider": "sim-openai", "model": "gpt-4o-mini"},
                    {"provider": "sim-anthropic", "model": "claude-haiku-4-5"},
                ]
            },
            "smart": {"targets": [{"provider": "sim-anthropic", "model": "claude-sonnet-4-5"}]},
        },
        "pricing": {
            "gpt-4o-mini": {"input_per_mtok": "0.15", "output_per_mtok": "0.60"},
            "claude-haiku-4-5": {"input_per_mtok": "1.00", "output_per_mtok": "5.00"},
            "claude-sonnet-4-5": {"input_per_mtok": "3.00", "output_per_mtok": "15.00"},
        },
        "cache": {"default": True, "ttl_s": 3600},
    }


def parse_config(data: Any, *, source: str = "config") -> GatewayConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'providers' and 'models'")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{source}: {key}: {first['msg']}") from None


def load_config(path: Path | None) -> GatewayConfig:
    """Load the YAML at `path`, or the built-in dev config when `path` is None."""
    if path is None:
        return parse_config(dev_config_dict(), source="built-in dev config")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(path))
