"""Budget caps: stop admitting requests before --max-total-tokens or --max-cost would be crossed.

Every attempt reserves its estimate (prompt estimate + max tokens, or the
mean completion so far) before it is sent; the reservation is settled with
the response's ``usage``. A request is admitted only while spent + reserved +
its own estimate stays within the cap, so in-flight work can finish without
crossing it. Spending counts the whole job: a resumed run starts from what
the checkpoint recorded, so raising a cap and rerunning continues.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from inferbatch.pricing import Pricing


@dataclass(slots=True)
class Reservation:
    tokens: int
    cost: float


class Budget:
    def __init__(
        self,
        *,
        max_tokens: int | None,
        max_cost: float | None,
        pricing: Pricing,
        spent_tokens: int = 0,
        spent_cost: float = 0.0,
    ) -> None:
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.pricing = pricing
        self.spent_tokens = spent_tokens
        self.spent_cost = spent_cost
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.outstanding = 0
        self._changed = asyncio.Event()

    @property
    def active(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    def reserve(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> Reservation | None:
        """Hold the estimate for one attempt; None if it would cross a cap now.

        While other reservations are outstanding, their settlement may free room (estimates are
        pessimistic): wait for ``changed()`` and try again. With none outstanding, the cap is reached."""
        tokens = prompt_tokens + completion_tokens
        cost = self.pricing.cost(model, prompt_tokens, completion_tokens) or 0.0
        if self.max_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens:
            return None
        if self.max_cost is not None and self.spent_cost + self.reserved_cost + cost > self.max_cost:
            return None
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        self.outstanding += 1
        return Reservation(tokens, cost)

    def settle(
        self, reservation: Reservation, model: str | None, prompt_tokens: int, completion_tokens: int, cached: int = 0
    ) -> None:
        """Replace the estimate with what was billed (``cached`` prompt tokens at the cached-input price, as the
        summary prices them: SPEC §8.43)."""
        self.reserved_tokens -= reservation.tokens
        self.reserved_cost -= reservation.cost
        self.spent_tokens += prompt_tokens + completion_tokens
        self.spent_cost += self.pricing.cost(model, prompt_tokens, completion_tokens, cached) or 0.0
        self.outstanding -= 1
        self.wake()

    def wake(self) -> None:
        """Wake every waiter (after a settlement, or when the run stops)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def describe(self) -> str:
        parts = []
        if self.max_tokens is not None:
            parts.append(f"--max-total-tokens {self.max_tokens} (spent {self.spent_tokens})")
        if self.max_cost is not None:
            parts.append(f"--max-cost {self.max_cost:g} USD (spent {self.spent_cost:.4f})")
        return " and ".join(parts)
