"""Cost from the pricing table: per provider and model, prompt-cache reads and writes priced apart."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from core.config import parse_config
from core.errors import ConfigError
from core.pricing import cost_usd
from core.providers.anthropic_messages import openai_body
from core.providers.base import completion_from_openai_body


def config(pricing: dict[str, Any]) -> Any:
    return parse_config(
        {
            "providers": {"oa": {"kind": "openai"}, "az": {"kind": "openai"}, "an": {"kind": "anthropic"}},
            "models": {
                "m": {"targets": [{"provider": "oa", "model": "gpt"}, {"provider": "az", "model": "gpt"}]},
                "c": {"targets": [{"provider": "an", "model": "claude"}]},
            },
            "pricing": pricing,
        }
    )


def test_a_provider_and_model_price_wins_over_the_models_own() -> None:
    priced = config(
        {"gpt": {"input_per_mtok": 1, "output_per_mtok": 2}, "az/gpt": {"input_per_mtok": 3}, "claude": {}}
    )

    assert cost_usd(priced, "oa", "gpt", 1_000_000, 1_000_000) == Decimal(3)
    assert cost_usd(priced, "az", "gpt", 1_000_000, 0) == Decimal(3)


def openrouter_beside_openai(pricing: dict[str, Any]) -> Any:
    return parse_config(
        {
            "providers": {"openai": {"kind": "openai"}, "openrouter": {"kind": "openai"}},
            "models": {
                "direct": {"targets": [{"provider": "openai", "model": "gpt-4o"}]},
                "routed": {"targets": [{"provider": "openrouter", "model": "openai/gpt-4o"}]},
            },
            "pricing": pricing,
        }
    )


def test_a_slashed_model_name_is_never_priced_by_another_providers_key() -> None:
    # `openai/gpt-4o` is provider openai's gpt-4o when a provider `openai` is configured; the
    # OpenRouter model of that name needs its own provider-qualified price.
    direct = {"input_per_mtok": 2.5, "output_per_mtok": 10}
    with pytest.raises(ConfigError) as refused:
        openrouter_beside_openai({"openai/gpt-4o": direct})
    assert """no price for 'openai/gpt-4o'; add pricing."openrouter/openai/gpt-4o" (""" in str(refused.value)

    priced = openrouter_beside_openai(
        {"openai/gpt-4o": direct, "openrouter/openai/gpt-4o": {"input_per_mtok": 3, "output_per_mtok": 12}}
    )
    assert cost_usd(priced, "openai", "gpt-4o", 1_000_000, 0) == Decimal("2.5")
    assert cost_usd(priced, "openrouter", "openai/gpt-4o", 1_000_000, 0) == Decimal(3)


def test_a_slashed_model_name_without_such_a_provider_is_a_plain_model_key() -> None:
    priced = parse_config(
        {
            "providers": {"openrouter": {"kind": "openai"}},
            "models": {"m": {"targets": [{"provider": "openrouter", "model": "openai/gpt-4o"}]}},
            "pricing": {"openai/gpt-4o": {"input_per_mtok": 3, "output_per_mtok": 12}},
        }
    )
    assert cost_usd(priced, "openrouter", "openai/gpt-4o", 0, 1_000_000) == Decimal(12)


def test_prompt_cache_reads_and_writes_cost_their_own_prices() -> None:
    priced = config(
        {
            "gpt": {"input_per_mtok": 1, "output_per_mtok": 2},
            "claude": {
                "input_per_mtok": "3",
                "output_per_mtok": "15",
                "cached_input_per_mtok": "0.30",
                "cache_write_per_mtok": "3.75",
            },
        }
    )

    cost = cost_usd(
        priced, "an", "claude", 1_000_000, 0, cached_input_tokens=400_000, cache_write_tokens=100_000
    )

    assert cost == Decimal("0.5") * 3 + Decimal("0.4") * Decimal("0.30") + Decimal("0.1") * Decimal("3.75")
    # Without cache prices, cached tokens cost the input price.
    assert cost_usd(priced, "oa", "gpt", 1_000_000, 0, cached_input_tokens=500_000) == Decimal(1)


def test_anthropic_cache_reads_and_writes_reach_the_completion() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 2,
            "cache_read_input_tokens": 300,
            "cache_creation_input_tokens": 50,
        },
    }

    completion = completion_from_openai_body(
        openai_body(message, provider="an", created_s=0), provider="an", model="claude"
    )

    assert (completion.input_tokens, completion.cached_input_tokens, completion.cache_write_tokens) == (
        360,
        300,
        50,
    )


def test_openai_cached_tokens_reach_the_completion() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 2000,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    }

    completion = completion_from_openai_body(body, provider="oa", model="gpt")

    assert (completion.cached_input_tokens, completion.cache_write_tokens) == (1024, 0)
