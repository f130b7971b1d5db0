"""Cost of a call from the config's pricing table (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal

from core.config import GatewayConfig

_MILLION = Decimal(1_000_000)


def cost_usd(
    config: GatewayConfig,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> Decimal:
    """What `provider` charges for these tokens of `model` (zero for a free provider's models:
    start-up refuses a paid model without a price). `input_tokens` counts the prompt-cache
    reads and writes among it, which are priced at their own rates where the config has them."""
    price = config.price_for(provider, model)
    if price is None:
        return Decimal(0)
    plain = max(input_tokens - cached_input_tokens - cache_write_tokens, 0)
    read_price = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    write_price = price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    total = (
        price.input_per_mtok * plain
        + read_price * cached_input_tokens
        + write_price * cache_write_tokens
        + price.output_per_mtok * output_tokens
    )
    return total / _MILLION
