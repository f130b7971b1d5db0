"""The upstream provider adapters and the registry that builds them from the config.

`build_providers` makes one adapter (one SDK client over one connection pool,
`base.sdk_client`) per configured provider, choosing the adapter class by its `kind`; a process's
composition root calls it once and awaits `close_providers` on shutdown, on the event loop
that ran the calls. Adding a provider kind means one new module with an adapter class plus one
line in `ADAPTERS` (and the kind in `ProviderConfig.kind`). Kind `azure` also takes the
deployment each of its models is served from, read from the targets (`azure_deployments`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Protocol, cast

from core.config import GatewayConfig, ProviderConfig
from core.errors import ConfigError
from core.providers.azure import AzureProvider, azure_deployments
from core.providers.base import Provider

__all__ = ["ADAPTER_PATHS", "AdapterFactory", "Provider", "adapter", "build_providers", "close_providers"]


class AdapterFactory(Protocol):
    def __call__(self, name: str, config: ProviderConfig, *, max_connections: int) -> Provider: ...


# Each kind's adapter class, imported when a provider of that kind is built: the anthropic SDK
# alone is 3,300 modules and about a second and a half of a process's start-up, paid for
# nothing by a deployment (or a `jobgate config check`) with no Anthropic provider.
ADAPTER_PATHS: Mapping[str, str] = {
    "openai": "core.providers.openai:OpenAIProvider",
    "anthropic": "core.providers.anthropic:AnthropicProvider",
    "azure": "core.providers.azure:AzureProvider",
    "gemini": "core.providers.gemini:GeminiProvider",
}


def adapter(kind: str) -> AdapterFactory | None:
    """The adapter class for `kind` (imported now), or None for an unknown kind."""
    path = ADAPTER_PATHS.get(kind)
    if path is None:
        return None
    module, _, name = path.partition(":")
    return cast(AdapterFactory, getattr(importlib.import_module(module), name))


def build_providers(config: GatewayConfig, *, max_connections: int = 1000) -> dict[str, Provider]:
    """One adapter per provider in `config`, keyed by the provider's name in the config file.

    `max_connections` sizes each adapter's pools together; give it at least the number of calls
    one process may have in flight to one provider, or calls queue for a connection inside it.
    Every provider is checked before any adapter is built: a client opens nothing until its
    first call, so there is nothing to close when building stops half way (and nothing could
    be awaited here).
    """
    factories: dict[str, AdapterFactory] = {}
    deployments = azure_deployments(config)
    for name, provider_config in config.providers.items():
        if provider_config.api_key_env is not None and not provider_config.api_key():
            variable = provider_config.api_key_env
            raise ConfigError(f"providers.{name}.api_key_env: environment variable {variable} is not set")
        factory = adapter(provider_config.kind)
        if factory is None:
            raise ConfigError(f"providers.{name}.kind: no adapter for kind {provider_config.kind!r}")
        if name in deployments:
            factory = functools.partial(AzureProvider, deployments=deployments[name])
        factories[name] = factory
    return {
        name: factory(name, config.providers[name], max_connections=max_connections)
        for name, factory in factories.items()
    }


async def close_providers(providers: Mapping[str, Provider]) -> None:
    """Close every adapter's connection pools."""
    for provider in providers.values():
        await provider.close()
