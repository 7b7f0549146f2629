"""What tokens cost: a small built-in price table, overridden by --price-in / --price-out.

Prices are USD per million tokens (prompt, completion) for Heroku Managed
Inference model ids. Source: the providers' public list prices, which
Heroku's Managed Inference add-on pricing follows, as listed in October 2025.
Prices change: check them, and pass --price-in/--price-out to be exact.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.00, 25.00),
    "claude-sonnet": (3.00, 15.00),
    "claude-4-5-sonnet": (3.00, 15.00),
    "claude-4-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet-latest": (3.00, 15.00),
    "claude-4-5-haiku": (1.00, 5.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-haiku": (0.25, 1.25),
    "nova-pro": (0.80, 3.20),
    "nova-lite": (0.06, 0.24),
    "gpt-oss-120b": (0.15, 0.60),
}


@dataclass(frozen=True, slots=True)
class Pricing:
    """Flags win over the table; a model the table does not know costs None (unknown), not zero."""

    price_in: float | None = None
    price_out: float | None = None

    def rates(self, model: str | None) -> tuple[float, float] | None:
        table = PRICES_USD_PER_MTOK.get(model or "")
        if self.price_in is not None or self.price_out is not None:
            base = table or (0.0, 0.0)
            return (
                self.price_in if self.price_in is not None else base[0],
                self.price_out if self.price_out is not None else base[1],
            )
        return table

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        rates = self.rates(model)
        if rates is None:
            return None
        return (prompt_tokens * rates[0] + completion_tokens * rates[1]) / 1_000_000
