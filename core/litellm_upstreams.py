"""Which jobgate provider serves a LiteLLM deployment (for `core.litellm_import`).

A LiteLLM deployment names its upstream by a prefix (`openai/`, `azure/`, `anthropic/`, ...) and
its own `api_base`, `api_version` and `api_key`; jobgate declares each upstream once, as a
provider. `Upstreams` gives every distinct prefix, URL, API version and key one provider, named
after its prefix (and its host when the URL is not the prefix's default). A URL or API version
LiteLLM read from the environment (`os.environ/NAME`) becomes a placeholder the operator fills
in; a key becomes the name of the variable that holds it, and a key written into the file is
never copied anywhere: the provider reads a variable named after it, which the operator sets.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal
from urllib.parse import urlsplit

from core.config_check import PLACEHOLDER_DOMAIN

ENV_PREFIX = "os.environ/"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Upstream:
    """What a LiteLLM provider prefix is in jobgate: a kind, its default URL and key variable."""

    kind: str
    base_url: str | None = None
    key_env: str | None = None
    free: bool = False
    # Where LiteLLM reads the URL when a deployment gives none and there is no default.
    base_env: str | None = None
    # Appended to `api_base` (Ollama's OpenAI-compatible API lives under /v1; LiteLLM calls its native one).
    path: str = ""


UPSTREAMS: Mapping[str, Upstream] = {
    "openai": Upstream("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "azure": Upstream("azure", None, "AZURE_API_KEY", base_env="AZURE_API_BASE"),
    "anthropic": Upstream("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "gemini": Upstream("gemini", None, "GEMINI_API_KEY"),
    "deepseek": Upstream("openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "openrouter": Upstream("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "groq": Upstream("openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": Upstream("openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "xai": Upstream("openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    "ollama": Upstream("openai", "http://localhost:11434", None, free=True, path="/v1"),
    "ollama_chat": Upstream("openai", "http://localhost:11434", None, free=True, path="/v1"),
    "hosted_vllm": Upstream("openai", None, None, free=True, base_env="HOSTED_VLLM_API_BASE"),
}


@dataclass
class Notes:
    """What a conversion could not do (`errors`), did not carry over (`warnings`), and left
    for the operator (`fill_in`)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fill_in: list[str] = field(default_factory=list)


@dataclass
class Provider:
    """One jobgate provider as it is being built: its config entry and what its targets add."""

    name: str
    settings: dict[str, Any]
    # Kind azure: the deployment serving each model (one per model, as jobgate requires).
    deployments: dict[str, str] = field(default_factory=dict)
    limits: dict[str, dict[str, int]] = field(default_factory=dict)
    timeout_s: float | None = None

    def config(self, default_timeout_s: float | None) -> dict[str, Any]:
        out = {k: v for k, v in self.settings.items() if v is not None}
        timeout = self.timeout_s or default_timeout_s
        if timeout:
            out["timeout_s"] = int(timeout) if timeout == int(timeout) else timeout
        if self.limits:
            out["models"] = self.limits
        return out


class Upstreams:
    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        self._providers: dict[tuple[Any, ...], Provider] = {}
        # Placeholder URL -> the variable LiteLLM read the real one from.
        self._placeholders: dict[str, str] = {}

    def providers(self) -> list[Provider]:
        return list(self._providers.values())

    def provider_for(self, where: str, prefix: str, params: Mapping[str, Any]) -> Provider | None:
        """The provider of a deployment's upstream (`prefix` is in UPSTREAMS), or None when its
        `api_base` or `api_key` is unusable (an error in the notes)."""
        upstream = UPSTREAMS[prefix]
        base = self._url(where, prefix, upstream, params.get("api_base"))
        if base is False:
            return None
        version = params.get("api_version")
        # YAML reads an unquoted 2024-10-21 as a date.
        version = version.isoformat() if isinstance(version, date) else version
        key = params.get("api_key")
        if isinstance(key, str) and key.startswith(ENV_PREFIX):
            env_name = key.removeprefix(ENV_PREFIX)
            if not _ENV_NAME.fullmatch(env_name):
                self.notes.errors.append(f"{where}: api_key: {key!r} does not name an environment variable")
                return None
            key_source: tuple[str, str | None] = ("env", env_name)
        elif key is not None:
            # Told apart by a digest held here only: the key itself goes nowhere.
            key_source = ("literal", hashlib.sha256(str(key).encode()).hexdigest())
        else:
            key_source = ("env", upstream.key_env)
        identity: tuple[Any, ...] = (prefix, base, version, key_source)
        provider = self._providers.get(identity)
        if provider is None:
            provider = self._providers[identity] = self._new(prefix, base, version, key_source)
            if key_source[0] == "literal":
                self.notes.warnings.append(
                    f"{where}: its api_key is written in the file; not copied:"
                    f" set ${provider.settings['api_key_env']}"
                )
        return provider

    def azure_slot(self, provider: Provider, model: str, deployment: str) -> Provider:
        """An Azure provider serves a model from one deployment: a second deployment of the same
        model goes to a second provider on the same endpoint (README, kind azure)."""
        identity = next(k for k, p in self._providers.items() if p is provider)
        slot, current = 1, provider
        while current.deployments.setdefault(model, deployment) != deployment:
            slot += 1
            if (*identity, slot) not in self._providers:
                name = unique_name(provider.name, {p.name for p in self.providers()})
                self._providers[(*identity, slot)] = Provider(name, dict(provider.settings))
            current = self._providers[(*identity, slot)]
        return current

    def _new(self, prefix: str, base: str | None, version: Any, key: tuple[str, str | None]) -> Provider:
        upstream = UPSTREAMS[prefix]
        stem = prefix.removesuffix("_chat").replace("_", "-")
        host = (urlsplit(base).hostname or "") if base else ""
        default = f"{upstream.base_url}{upstream.path}" if upstream.base_url else None
        if host and base != default and not host.endswith(PLACEHOLDER_DOMAIN):
            stem = f"{stem}-{re.sub(r'[^a-z0-9-]', '-', host.split('.')[0].lower())}"
        name = unique_name(stem, {p.name for p in self.providers()})
        settings: dict[str, Any] = {"kind": upstream.kind}
        url_field = "endpoint" if upstream.kind == "azure" else "base_url"
        if base is not None:
            settings[url_field] = base
        if base in self._placeholders:
            self.notes.fill_in.append(
                f"providers.{name}.{url_field}: the URL LiteLLM read from ${self._placeholders[base]}"
            )
        if upstream.kind == "azure":
            if isinstance(version, str) and version.startswith(ENV_PREFIX):
                variable = version.removeprefix(ENV_PREFIX)
                self.notes.fill_in.append(f"providers.{name}.api_version: LiteLLM read it from ${variable}")
            elif version is not None:
                settings["api_version"] = str(version)
            else:
                self.notes.fill_in.append(
                    f"providers.{name}.api_version: not in the file (LiteLLM used $AZURE_API_VERSION"
                    " or its default)"
                )
        env_name = key[1]
        if key[0] == "literal":
            taken = {p.settings.get("api_key_env") for p in self.providers()}
            env_name = unique_name(f"{name.upper().replace('-', '_')}_API_KEY", taken, sep="_")
        settings["api_key_env"] = env_name
        if upstream.free:
            settings["free"] = True
        return Provider(name, settings)

    def _url(self, where: str, prefix: str, upstream: Upstream, api_base: Any) -> str | Literal[False] | None:
        """The provider's URL (None: the kind's default), or False when `api_base` is unusable."""
        if api_base is None and upstream.base_url is None and upstream.base_env is not None:
            api_base = ENV_PREFIX + upstream.base_env
        if isinstance(api_base, str) and api_base.startswith(ENV_PREFIX):
            variable = api_base.removeprefix(ENV_PREFIX)
            host = variable.lower().replace("_", "-")
            placeholder = f"https://{host}.fill-in{PLACEHOLDER_DOMAIN}{upstream.path}"
            self._placeholders[placeholder] = variable
            return placeholder
        if api_base is not None and not isinstance(api_base, str):
            self.notes.errors.append(f"{where}: api_base is not a string")
            return False
        base = (api_base or upstream.base_url or "").rstrip("/")
        if not base:
            return None
        if prefix == "azure":
            return base.removesuffix("/openai")
        if prefix == "anthropic":
            # LiteLLM's anthropic api_base may name the endpoint; the SDK wants the root.
            return base.removesuffix("/v1/messages").removesuffix("/v1")
        return base if base.endswith(upstream.path) else base + upstream.path


def inferred_prefix(model: str) -> str:
    """LiteLLM's provider for a model named without one (its own table; the two common cases)."""
    if re.match(r"(gpt-|o[134]\b|o[134]-|chatgpt-|ft:gpt)", model):
        return "openai"
    return "anthropic" if model.startswith("claude-") else model


def unique_name(name: str, taken: set[Any], *, sep: str = "-") -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}{sep}{n}" in taken:
        n += 1
    return f"{name}{sep}{n}"
