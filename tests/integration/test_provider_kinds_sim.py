"""The `azure` and `gemini` adapters against the real simulated upstream (`python -m sim`).

Each call goes through the official openai SDK (`AsyncAzureOpenAI`, `AsyncOpenAI`) to the sim,
which records what it was sent (`GET /sim/requests`): the path and query, which credential
headers came and the key they carried. So these tests read the request shape on the wire, not
the adapter's intentions, and every failure comes back in the provider's own error body.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from core.config import ProviderConfig
from core.domain.chat import ChatRequest
from core.domain.relay import Relay
from core.errors import ContentFiltered, Overloaded, RateLimited, ServerError
from core.providers import Provider
from core.providers.azure import AzureProvider
from core.providers.gemini import GeminiProvider
from sim.tokens import count_tokens, prompt_tokens
from tests.sim_process import SimHandle, run_sim

API_VERSION = "2024-10-21"
CANARY = "org-Canary7"

MakeAzure = Callable[..., AzureProvider]
MakeGemini = Callable[..., GeminiProvider]


def ask(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], params={"max_tokens": 64})


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with run_sim() as handle:
        yield handle


@pytest.fixture
def fresh_sim(sim: SimHandle) -> SimHandle:
    sim.reset(config=True)
    return sim


@pytest.fixture
def provider_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A key in the environment variable the providers below name."""
    key = f"test-key-{os.urandom(6).hex()}"
    monkeypatch.setenv("JOBGATE_TEST_PROVIDER_KEY", key)
    return key


@pytest.fixture
async def made() -> AsyncIterator[list[Provider]]:
    providers: list[Provider] = []
    yield providers
    for provider in providers:
        await provider.close()


@pytest.fixture
def make_azure(fresh_sim: SimHandle, provider_key: str, made: list[Provider]) -> MakeAzure:
    def make(deployments: dict[str, str] | None = None, **options: Any) -> AzureProvider:
        config = ProviderConfig.model_validate(
            {
                "kind": "azure",
                "endpoint": fresh_sim.azure_endpoint,
                "api_version": API_VERSION,
                "timeout_s": 10,
                **({} if options.get("token_provider") else {"api_key_env": "JOBGATE_TEST_PROVIDER_KEY"}),
            }
        )
        provider = AzureProvider("azure", config, max_connections=8, deployments=deployments, **options)
        made.append(provider)
        return provider

    return make


@pytest.fixture
def make_gemini(fresh_sim: SimHandle, provider_key: str, made: list[Provider]) -> MakeGemini:
    def make() -> GeminiProvider:
        config = ProviderConfig.model_validate(
            {
                "kind": "gemini",
                "base_url": fresh_sim.gemini_base_url,
                "api_key_env": "JOBGATE_TEST_PROVIDER_KEY",
                "timeout_s": 10,
            }
        )
        provider = GeminiProvider("gemini", config, max_connections=8)
        made.append(provider)
        return provider

    return make


# --- Azure ----------------------------------------------------------------------------------------


async def test_azure_calls_the_targets_deployment_with_the_api_version_and_the_key_in_api_key(
    fresh_sim: SimHandle, make_azure: MakeAzure, provider_key: str
) -> None:
    azure = make_azure({"gpt-4o": "prod-4o"})
    completion = await azure.complete(ask("hello azure"), "gpt-4o")

    [seen] = fresh_sim.requests("prod-4o")
    assert seen["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert seen["query"] == f"api-version={API_VERSION}"
    assert (seen["auth_headers"], seen["key"], seen["status"]) == (["api-key"], provider_key, 200)
    # Priced and reported as the target's model; the body keeps what the deployment said it ran.
    assert (completion.provider, completion.model, completion.body["model"]) == ("azure", "gpt-4o", "prod-4o")
    assert completion.body["choices"][0]["message"]["content"] == "echo: hello azure"
    assert "prompt_filter_results" in completion.body
    counted = fresh_sim.stats()["models"]["prod-4o"]
    assert (completion.input_tokens, completion.output_tokens) == (
        counted["input_tokens"],
        counted["output_tokens"],
    )
    assert completion.input_tokens == prompt_tokens([{"role": "user", "content": "hello azure"}])
    assert completion.output_tokens == count_tokens("echo: hello azure")


async def test_azure_without_a_named_deployment_calls_one_named_as_the_model(
    fresh_sim: SimHandle, make_azure: MakeAzure
) -> None:
    await make_azure().complete(ask("hi"), "gpt-4o-mini")
    [seen] = fresh_sim.requests("gpt-4o-mini")
    assert seen["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"


async def test_azure_with_an_entra_id_token_provider_sends_a_bearer_token_and_no_api_key(
    fresh_sim: SimHandle, make_azure: MakeAzure
) -> None:
    tokens: list[str] = []

    async def token_provider() -> str:
        tokens.append(f"entra-token-{len(tokens)}")
        return tokens[-1]

    azure = make_azure({"gpt-4o": "entra-4o"}, token_provider=token_provider)
    await azure.complete(ask("one"), "gpt-4o")
    await azure.complete(ask("two"), "gpt-4o")

    seen = fresh_sim.requests("entra-4o")
    # Asked before every call (azure-identity caches and refreshes the token behind it).
    assert [(s["auth_headers"], s["key"]) for s in seen] == [
        (["authorization"], "entra-token-0"),
        (["authorization"], "entra-token-1"),
    ]


async def test_azure_with_entra_id_gets_its_token_from_azure_identitys_own_credential_chain(
    fresh_sim: SimHandle, made: list[Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real DefaultAzureCredential (the `azure` extra), finding an App Service managed
    # identity in the environment: the sim's `/sim/identity/token` stands for that endpoint.
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{fresh_sim.url}/sim/identity/token")
    monkeypatch.setenv("IDENTITY_HEADER", "app-service-secret")
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    config = ProviderConfig.model_validate(
        {
            "kind": "azure",
            "endpoint": fresh_sim.azure_endpoint,
            "api_version": API_VERSION,
            "entra_id": True,
            "timeout_s": 10,
        }
    )
    azure = AzureProvider("azure", config, max_connections=8, deployments={"gpt-4o": "mi-4o"})
    made.append(azure)

    await azure.complete(ask("one"), "gpt-4o")
    await azure.complete(ask("two"), "gpt-4o")

    seen = fresh_sim.requests("mi-4o")
    # One token, asked for Azure OpenAI's audience, cached by azure-identity for both calls;
    # no api-key header at all.
    assert [(s["auth_headers"], s["key"]) for s in seen] == [(["authorization"], "sim-entra-1")] * 2
    assert fresh_sim.identity() == {
        "tokens": 1,
        "resources": ["https://cognitiveservices.azure.com"],
    }


async def test_azure_streams_through_the_deployment(fresh_sim: SimHandle, make_azure: MakeAzure) -> None:
    relay = Relay()
    completion = await make_azure({"gpt-4o": "stream-4o"}).complete(ask("stream me"), "gpt-4o", relay=relay)
    relay.finish()
    chunks = [chunk async for chunk in relay.chunks()]

    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: stream me"
    assert (completion.model, completion.output_tokens) == ("gpt-4o", count_tokens("echo: stream me"))
    [seen] = fresh_sim.requests("stream-4o")
    assert seen["path"] == "/openai/deployments/stream-4o/chat/completions"


async def test_azure_refusing_the_prompt_with_its_content_filter_is_content_filtered(
    fresh_sim: SimHandle, make_azure: MakeAzure
) -> None:
    with pytest.raises(ContentFiltered) as raised:
        await make_azure().complete(ask("filter_prompt: something violent"), "guarded")

    error = raised.value
    assert (error.status_code, error.upstream_code, error.retryable) == (400, "content_filter", False)
    assert (
        error.message == f"azure answered 400 (refused by its content filter), request id {error.request_id}"
    )


async def test_azure_stopping_the_answer_with_its_content_filter_is_content_filtered(
    fresh_sim: SimHandle, make_azure: MakeAzure
) -> None:
    with pytest.raises(ContentFiltered, match="azure's content filter stopped the answer"):
        await make_azure().complete(ask("filter_answer: something violent"), "guarded")
    assert fresh_sim.stats()["models"]["guarded"]["calls"] == 1  # a 200, as Azure answers it


async def test_an_azure_429_is_rate_limited_with_its_retry_after_and_without_its_words(
    fresh_sim: SimHandle, make_azure: MakeAzure
) -> None:
    fresh_sim.configure(
        models={"busy-4o": {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": 6, "organization": CANARY}}
    )
    with pytest.raises(RateLimited) as raised:
        await make_azure({"gpt-4o": "busy-4o"}).complete(ask("hi"), "gpt-4o")

    assert (raised.value.status_code, raised.value.retry_after_s) == (429, 6.0)
    assert CANARY not in raised.value.message and "Azure" not in raised.value.message


async def test_an_azure_500_is_a_server_error(fresh_sim: SimHandle, make_azure: MakeAzure) -> None:
    fresh_sim.configure(models={"broken": {"fail_rate": 1.0, "fail_status": 500}})
    with pytest.raises(ServerError):
        await make_azure().complete(ask("hi"), "broken")


# --- Gemini ---------------------------------------------------------------------------------------


async def test_gemini_calls_its_openai_compatible_path_with_the_key_as_a_bearer_token(
    fresh_sim: SimHandle, make_gemini: MakeGemini, provider_key: str
) -> None:
    completion = await make_gemini().complete(ask("hello gemini"), "gemini-2.5-flash")

    [seen] = fresh_sim.requests("gemini-2.5-flash")
    assert seen["path"] == "/v1beta/openai/chat/completions"
    assert (seen["auth_headers"], seen["key"]) == (["authorization"], provider_key)
    assert (completion.provider, completion.model) == ("gemini", "gemini-2.5-flash")
    assert completion.body["choices"][0]["message"]["content"] == "echo: hello gemini"
    counted = fresh_sim.stats()["models"]["gemini-2.5-flash"]
    assert (completion.input_tokens, completion.output_tokens) == (
        counted["input_tokens"],
        counted["output_tokens"],
    )


async def test_gemini_resource_exhausted_is_rate_limited_for_the_retry_delay_in_its_body(
    fresh_sim: SimHandle, make_gemini: MakeGemini
) -> None:
    fresh_sim.configure(
        models={
            "exhausted": {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": 12, "organization": CANARY}
        }
    )
    with pytest.raises(RateLimited) as raised:
        await make_gemini().complete(ask("hi"), "exhausted")

    error = raised.value
    assert (error.status_code, error.retry_after_s, error.upstream_code) == (429, 12.0, "RESOURCE_EXHAUSTED")
    assert error.message == f"gemini answered 429 (rate limited), request id {error.request_id}"
    assert CANARY not in error.message


async def test_gemini_limiter_429s_name_their_wait_in_the_body_too(
    fresh_sim: SimHandle, make_gemini: MakeGemini
) -> None:
    fresh_sim.configure(models={"one-a-minute": {"rpm": 1}})
    gemini = make_gemini()
    await gemini.complete(ask("first"), "one-a-minute")
    with pytest.raises(RateLimited) as raised:
        await gemini.complete(ask("second"), "one-a-minute")

    # One request a minute: the bucket refills in about 60 s, and only the body says so.
    assert raised.value.retry_after_s is not None and 55 <= raised.value.retry_after_s <= 61


@pytest.mark.parametrize(("status", "named"), [(500, ServerError), (503, Overloaded)])
async def test_gemini_server_failures_are_named_by_their_status(
    status: int, named: type[Exception], fresh_sim: SimHandle, make_gemini: MakeGemini
) -> None:
    fresh_sim.configure(models={"failing": {"fail_rate": 1.0, "fail_status": status}})
    with pytest.raises(named) as raised:
        await make_gemini().complete(ask("hi"), "failing")
    assert getattr(raised.value, "retry_after_s", None) is None  # Gemini names no wait for these
