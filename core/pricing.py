"""Cost of a call from the config's pricing table (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal

from core.config import GatewayConfig

_MILLION = Decimal(1_000_000)


def cost_usd(config: GatewayConfig, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """Zero for models without a price (the operator has not said what they cost)."""
    price = config.pricing.get(model)
    if price is None:
        return Decimal(0)
    return (price.input_per_mtok * input_tokens + price.output_per_mtok * output_tokens) / _MILLION
