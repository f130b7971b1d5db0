"""Cost of a call from the config's pricing table (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal

from core.config import GatewayConfig

_MILLION = Decimal(1_000_000)


def cost_usd(
    config: GatewayConfig, provider: str, model: str, input_tokens: int, output_tokens: int
) -> Decimal:
    """What `provider` charges for these tokens of `model` (zero for a free provider's models:
    start-up refuses a paid model without a price)."""
    price = config.price_for(provider, model)
    if price is None:
        return Decimal(0)
    return (price.input_per_mtok * input_tokens + price.output_per_mtok * output_tokens) / _MILLION
