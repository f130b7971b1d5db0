"""The adapter for Azure OpenAI: OpenAI's wire format on one resource's deployments.

Kind `azure` calls `POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`
through the openai SDK's `AsyncAzureOpenAI` (one aiohttp pool, the SDK's own retries off, as for
every adapter), with the key in an `api-key` header, or, with `entra_id: true`, a Microsoft
Entra ID token: azure-identity's `DefaultAzureCredential` (managed identity, workload identity,
`az login`, …) behind a bearer-token provider the SDK asks before each call (the `[azure]`
extra). Everything else is the `openai` kind's: request, answer, streaming, `x-ratelimit-*`
headers and the error boundary, where Azure's content filter (a 400 with `code:
content_filter`, or a 200 whose `finish_reason` is `content_filter`) is `ContentFiltered`.

A target names its deployment (`Target.deployment`, by default a deployment named as the
model). The deployment goes into the URL; the target's `model` is what jobgate prices, shows in
`served_by` and keys per-model limits on (`providers.<p>.models.<model>`). `azure_deployments`
holds a provider to one deployment per model, so that model's bucket and its 429 pause are the
deployment's own, which is where Azure puts its quota.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx2
import openai

from core.config import GatewayConfig, ProviderConfig
from core.domain.chat import ChatRequest, Completion
from core.domain.relay import Relay
from core.errors import ConfigError
from core.providers.base import utc_now
from core.providers.openai import OpenAIProvider

# The audience of an Entra ID token for Azure OpenAI (Azure AI services).
ENTRA_ID_SCOPE = "https://cognitiveservices.azure.com/.default"

TokenProvider = Callable[[], str | Awaitable[str]]


class AzureProvider(OpenAIProvider):
    """A provider of kind `azure`: one Azure OpenAI resource, a deployment per model."""

    kind = "azure"

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        max_connections: int = 1000,
        deployments: Mapping[str, str] | None = None,
        token_provider: TokenProvider | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if config.endpoint is None or config.api_version is None:
            raise ConfigError(f"providers.{name}: kind azure needs endpoint and api_version")
        self._deployments = dict(deployments or {})
        self._credential: Any = None
        if token_provider is None and config.entra_id:
            self._credential, token_provider = _entra_id_token_provider(name)
        self._token_provider = token_provider
        super().__init__(name, config, max_connections=max_connections, now=now)

    def _make_client(self, config: ProviderConfig, max_connections: int) -> openai.AsyncOpenAI:
        assert config.endpoint is not None and config.api_version is not None
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return openai.AsyncAzureOpenAI(
            azure_endpoint=config.endpoint,
            api_version=config.api_version,
            api_key=None if self._token_provider is not None else config.api_key(),
            azure_ad_token_provider=self._token_provider,
            timeout=self._timeout,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(timeout=self._timeout, limits=limits),
        )

    def deployment(self, model: str) -> str:
        """The deployment that serves `model` here."""
        return self._deployments.get(model, model)

    async def complete(self, request: ChatRequest, model: str, *, relay: Relay | None = None) -> Completion:
        # The SDK puts the body's `model` into the URL as the deployment; the answer is recorded
        # under the target's model, which prices it (the body keeps what Azure said it ran).
        completion = await super().complete(request, self.deployment(model), relay=relay)
        return replace(completion, model=model)

    async def close(self) -> None:
        await self.client.close()
        if self._credential is not None:
            await self._credential.close()


def _entra_id_token_provider(provider: str) -> tuple[Any, TokenProvider]:
    """An async `DefaultAzureCredential` and the SDK's token provider over it (cached and
    refreshed by azure-identity). Imported here: azure-identity is an optional extra."""
    try:
        identity = importlib.import_module("azure.identity.aio")
    except ImportError as exc:
        raise ConfigError(
            f"providers.{provider}.entra_id: needs azure-identity (pip install 'jobgate[azure]')"
        ) from exc
    credential = identity.DefaultAzureCredential()
    return credential, identity.get_bearer_token_provider(credential, ENTRA_ID_SCOPE)


def azure_deployments(config: GatewayConfig) -> dict[str, dict[str, str]]:
    """For each azure provider, the deployment serving each model its targets name.

    Raises `ConfigError` naming the key when a target of another kind names a deployment, when
    one provider would serve one model from two deployments (its per-model bucket and pause
    would then span both), or when per-model limits are keyed by a deployment's name instead of
    its model's.
    """
    found: dict[str, dict[str, str]] = {
        name: {} for name, provider in config.providers.items() if provider.kind == "azure"
    }
    for alias, route in config.models.items():
        for i, target in enumerate(route.targets):
            key = f"models.{alias}.targets.{i}.deployment"
            deployments = found.get(target.provider)
            if deployments is None:
                if target.deployment is not None:
                    kind = config.providers[target.provider].kind
                    raise ConfigError(f"{key}: only for azure providers ({target.provider!r} is kind {kind})")
                continue
            deployment = target.deployment or target.model
            known = deployments.setdefault(target.model, deployment)
            if known != deployment:
                raise ConfigError(
                    f"{key}: provider {target.provider!r} already serves {target.model!r} from deployment"
                    f" {known!r}; a provider has one deployment per model (declare a second azure"
                    " provider for the other deployment)"
                )
    for name, deployments in found.items():
        for limited in config.providers[name].models:
            models = sorted(model for model, d in deployments.items() if d == limited and model != limited)
            if models:
                raise ConfigError(
                    f"providers.{name}.models.{limited}: limits are keyed by the target's model, not its"
                    f" deployment: write providers.{name}.models.{models[0]}"
                )
    return found
