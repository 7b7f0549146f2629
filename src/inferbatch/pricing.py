"""What tokens cost and how fast a model may be called: a small built-in table, overridden by flags.

Keys are the model ids Heroku Managed Inference takes in a request's ``model``
(``heroku ai:models:list`` shows them). Each entry has the price in USD per
million prompt and completion tokens, and the requests and tokens per minute
Heroku publishes for the model; ``None`` where no source gave a figure.

Sources, as read on 2026-12-02 (cached-input prices: Anthropic's cache reads cost a tenth of the input price;
no cached-input price is used for the other models, whose cached prompt tokens count at the input price):

* models and rate limits: Heroku Dev Center, "Managed Inference and Agents API
  with ..." model cards (devcenter.heroku.com/articles/heroku-inference-api-model-*:
  Claude Sonnet 4.6 updated 2026-02-18, Claude 4.5 Sonnet 2026-02-10, Claude 4.5
  Haiku and Nova Lite 2026-01-30, Nova 2 Lite 2025-12-17, gpt-oss-120b
  2025-09-04) and Heroku's "Rate Limits" table for the older models;
* prices: Heroku's pages found carry no per-token prices, so these are the
  model makers' list prices (Anthropic's pricing page; Amazon Bedrock on-demand
  for Nova and gpt-oss), which the add-on's prices have followed.

Not in the table (no Heroku model card with their ids was found): the
open-weight models Heroku has added (DeepSeek, Kimi, MiniMax, GLM, ...), and
Nova 2 Lite's price. A model the table does not price costs ``None``
(unknown, never zero): ``--price-in``/``--price-out`` give it one, and
``--max-cost`` refuses to run without one (SPEC §8.31). Prices change: the
flags always win.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferbatch.errors import ConfigError

TABLE_DATE = "2026-12-02"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model: USD per million prompt / completion tokens, and Heroku's published per-minute limits."""

    price_in: float | None
    price_out: float | None
    rpm: int | None = None
    tpm: int | None = None
    price_cached_in: float | None = None  # a prompt token read from the provider's cache; None: as price_in


MODELS: dict[str, ModelInfo] = {
    "claude-opus-4-6": ModelInfo(
        5.00, 25.00, price_cached_in=0.5
    ),  # id as Heroku names Sonnet 4.6; no published limits found
    "claude-opus-4-5": ModelInfo(5.00, 25.00, price_cached_in=0.5),
    "claude-sonnet-4-6": ModelInfo(3.00, 15.00, 150, 800_000, price_cached_in=0.3),
    "claude-sonnet": ModelInfo(
        3.00, 15.00, 150, 800_000, price_cached_in=0.3
    ),  # the card's short id for the latest Sonnet
    "claude-4-5-sonnet": ModelInfo(3.00, 15.00, 150, 800_000, price_cached_in=0.3),
    "claude-4-5-haiku": ModelInfo(1.00, 5.00, 200, 800_000, price_cached_in=0.1),
    "claude-4-sonnet": ModelInfo(3.00, 15.00, 150, 800_000, price_cached_in=0.3),  # being retired
    "claude-3-7-sonnet": ModelInfo(3.00, 15.00, 150, 800_000, price_cached_in=0.3),
    "claude-3-5-sonnet-latest": ModelInfo(3.00, 15.00, 150, 800_000, price_cached_in=0.3),
    "claude-3-5-haiku": ModelInfo(0.80, 4.00, 200, 800_000, price_cached_in=0.08),
    "claude-3-haiku": ModelInfo(0.25, 1.25, 250, 800_000, price_cached_in=0.025),
    "openai-gpt-oss-120b": ModelInfo(0.15, 0.60, 200, 800_000),
    "nova-pro": ModelInfo(0.80, 3.20, 150, 800_000),
    "nova-lite": ModelInfo(0.06, 0.24, 150, 800_000),
    "nova-2-lite": ModelInfo(None, None, 150, 800_000),
}

# Prices only, for the models the table prices: model -> (USD per M prompt tokens, USD per M completion tokens).
PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    name: (info.price_in, info.price_out)
    for name, info in MODELS.items()
    if info.price_in is not None and info.price_out is not None
}


def published_limits(model: str | None) -> tuple[int | None, int | None]:
    """Heroku's published (requests, tokens) per minute for ``model``; (None, None) when unknown."""
    info = MODELS.get(model or "")
    return (info.rpm, info.tpm) if info is not None else (None, None)


@dataclass(frozen=True, slots=True)
class Pricing:
    """Flags win over the table; a model the table does not price costs None (unknown), never zero.

    For a model the table prices, one flag replaces its own half of the price. For any other model both
    ``--price-in`` and ``--price-out`` are needed: a price with only one half would count the other as free.
    """

    price_in: float | None = None
    price_out: float | None = None

    def rates(self, model: str | None) -> tuple[float, float] | None:
        table = PRICES_USD_PER_MTOK.get(model or "")
        price_in = self.price_in if self.price_in is not None else (table[0] if table else None)
        price_out = self.price_out if self.price_out is not None else (table[1] if table else None)
        if price_in is None or price_out is None:
            return None
        return price_in, price_out

    def priced(self, model: str | None) -> bool:
        return self.rates(model) is not None

    def cost(
        self, model: str | None, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """USD for the tokens; ``cached_tokens`` (part of ``prompt_tokens``) at the table's cached-input price
        where it has one (SPEC §8.43), unless --price-in sets the prompt price."""
        rates = self.rates(model)
        if rates is None:
            return None
        info = MODELS.get(model or "")
        cached_rate = info.price_cached_in if info is not None and self.price_in is None else None
        cached = min(max(cached_tokens, 0), prompt_tokens) if cached_rate is not None else 0
        prompt_cost = (prompt_tokens - cached) * rates[0] + cached * (cached_rate or 0.0)
        return (prompt_cost + completion_tokens * rates[1]) / 1_000_000


def unpriced_error(model: str | None) -> ConfigError:
    """SPEC §8.31: ``--max-cost`` with a model that has no price is refused (exit 2): its cost would count as 0."""
    named = f"model {model!r}" if model else "rows that name no model"
    return ConfigError(
        f"--max-cost needs a price for every model the run uses, and {named} has none in the built-in table "
        f"(prices as of {TABLE_DATE}); pass --price-in and --price-out (USD per million prompt / completion tokens)"
    )
