"""Budgets: a run or a batch stops cleanly before it spends more than it was given.

`run(..., budget=lp.Budget(max_tokens=..., max_requests=..., max_retries=...))` wraps the
backend in a `BudgetedBackend` that every program of the run (or of the batch, and all their
forks) shares. Before each request it checks what was spent; a request that would go over is
not sent, and the primitive fails with `BudgetExceededError`. Programs that finished keep their
results; the others carry the budget error, so a retry loop cannot run up an unbounded bill.

- `max_requests`: requests sent to the engine (a gen is one per sample; a select one per
  choice, plus one per choice for the unconditional method; a prefix warm-up is one).
- `max_tokens`: prompt + completion tokens as the engine reported them. It is checked before a
  request, so the last request may take the total past the limit by its own size.
- `max_retries`: requests lmprog sent again after a failure it retries (lp.LlamaCpp, lp.SGLang);
  lp.OpenAI and lp.VLLM retry inside the openai SDK, which keeps its own `max_retries=`.
- `max_cost`: money, each request priced from its own counts (lmprog.pricing) at the backend's
  price (`backend.price = lp.Price(...)`), else the price table's for a hosted model. Checked
  before a request like `max_tokens`. With no price known, nothing is sent: counting such
  requests as free would make the limit a lie. So are select scoring requests and prefix
  warm-ups, whose token counts engines do not report: scoring is refused, warm-ups skipped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal

from lmprog.backends.base import (
    Backend,
    GenerateRequest,
    Generation,
    TextCallback,
    WrappedBackend,
    retries_charged_to,
)
from lmprog.backends.openai import OpenAI
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.errors import BackendResponseError, BudgetExceededError, UnsupportedFeatureError
from lmprog.pricing import (
    OPENAI_API_URL,
    Amount,
    Cost,
    Pricer,
    currency_code,
    money,
    table_price,
)


@dataclass(frozen=True)
class Budget:
    """Limits for one run or one batch (None: no limit). `max_cost` is in `currency`."""

    max_tokens: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None
    max_cost: Amount | None = None
    currency: str = "USD"

    def __post_init__(self) -> None:
        if self.max_cost is not None:
            object.__setattr__(self, "max_cost", money(self.max_cost, "Budget(max_cost=...)"))
        object.__setattr__(self, "currency", currency_code(self.currency, "Budget(currency=...)"))

    @property
    def cost_limit(self) -> Cost | None:
        """`max_cost` as a Cost in `currency` (None: no money limit)."""
        return None if self.max_cost is None else Cost(Decimal(self.max_cost), self.currency)


@dataclass
class Spent:
    tokens: int = 0
    requests: int = 0
    retries: int = 0
    cost: Cost = field(default_factory=lambda: Cost(Decimal(0)))


def _known_price(backend: Backend) -> tuple[Pricer | None, str]:
    """The price set on `backend` (or on a wrapper around it), else the price table's for the
    hosted model an lp.OpenAI reaches; with None, why neither is known."""
    target = backend
    while target.price is None and isinstance(target, WrappedBackend):
        target = target.inner
    if target.price is not None:
        return target.price, ""
    if isinstance(target, OpenAI):
        try:
            return table_price(target.model, target.base_url or OPENAI_API_URL), ""
        except LookupError as exc:
            return None, str(exc)
    return None, "a self-hosted model has no entry in the price table (genai-prices)"


def price_of(backend: Backend) -> Pricer:
    """What `backend`'s tokens cost. UnsupportedFeatureError, naming the model and how to set
    a price, when it is not known."""
    price, why = _known_price(backend)
    if price is not None:
        return price
    raise UnsupportedFeatureError(
        backend.name,
        f"price its tokens for a max_cost budget: {why}",
        "set its price, e.g. backend.price = lp.Price(input=0.10, output=0.40, "
        "cached_input=0.05) in USD per million tokens",
    )


def cost_of(price: Pricer, generation: Generation) -> Cost | None:
    """What one generation cost at `price`; None when the engine did not report its counts.
    Prompt tokens the engine did not say were cached are priced as input."""
    if generation.prompt_tokens is None or generation.completion_tokens is None:
        return None
    return price.cost(
        generation.prompt_tokens, generation.completion_tokens, generation.cached_tokens or 0
    )


def request_cost(backend: Backend, generation: Generation) -> Cost | None:
    """What one generation cost at `backend`'s price (None when the price is not known).
    Every request asks, so an unpriced backend costs a lookup here, not a raised error."""
    price, _ = _known_price(backend)
    return None if price is None else cost_of(price, generation)


class BudgetMeter:
    """What a run or batch has spent so far, checked against its budget."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.spent = Spent(cost=Cost(Decimal(0), budget.currency))
        self._lock = threading.Lock()

    def take_requests(self, count: int = 1) -> None:
        with self._lock:
            limit = self.budget.max_requests
            if limit is not None and self.spent.requests + count > limit:
                raise BudgetExceededError(
                    f"the budget of {limit} requests is spent ({self.spent.requests} sent)"
                )
            limit = self.budget.max_tokens
            if limit is not None and self.spent.tokens >= limit:
                raise BudgetExceededError(
                    f"the budget of {limit} tokens is spent ({self.spent.tokens} used)"
                )
            cost_limit = self.budget.cost_limit
            if cost_limit is not None and self.spent.cost.amount >= cost_limit.amount:
                raise BudgetExceededError(
                    f"the budget of {cost_limit} is spent ({self.spent.cost} spent)"
                )
            self.spent.requests += count

    def add_tokens(self, generation: Generation) -> None:
        with self._lock:
            self.spent.tokens += (generation.prompt_tokens or 0) + (
                generation.completion_tokens or 0
            )

    def add_cost(self, cost: Cost) -> None:
        with self._lock:
            self.spent.cost += cost

    def take_retry(self) -> None:
        with self._lock:
            limit = self.budget.max_retries
            if limit is not None and self.spent.retries >= limit:
                raise BudgetExceededError(
                    f"the budget of {limit} retries is spent; the request failed again"
                )
            self.spent.retries += 1


class BudgetedBackend(WrappedBackend):
    """`backend`, with every request charged to `meter` first."""

    def __init__(self, backend: Backend, meter: BudgetMeter) -> None:
        super().__init__(backend)
        self.meter = meter
        self._price: Pricer | None = None

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        price = self._checked_price()
        self.meter.take_requests()
        with retries_charged_to(self.meter.take_retry):
            generation = await self.inner.generate(request, on_text)
        self.meter.add_tokens(generation)
        if price is not None:
            cost = cost_of(price, generation)
            if cost is None:
                raise BackendResponseError(
                    f"{self.name} reported no token counts for a request, so its cost is "
                    "unknown and the max_cost budget cannot be kept"
                )
            self.meter.add_cost(cost)
        return generation

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        if self.meter.budget.max_cost is not None:
            raise UnsupportedFeatureError(
                self.name,
                "price select's scoring requests for a max_cost budget (engines report no "
                "token counts for them)",
                "use lp.select(..., choices_method=lp.constrained_decoding), whose one "
                "generation is priced, or a max_requests or max_tokens budget",
            )
        per_choice = 2 if method.requires_unconditional_logprobs else 1
        self.meter.take_requests(per_choice * len(choices))
        with retries_charged_to(self.meter.take_retry):
            return await self.inner.score_choices(context, choices, method)

    async def warm(self, prompt: str) -> None:
        if self.meter.budget.max_cost is not None:
            return  # a warm-up's tokens are not reported, so it could not be charged: skip it
        self.meter.take_requests()
        with retries_charged_to(self.meter.take_retry):
            await self.inner.warm(prompt)

    def _checked_price(self) -> Pricer | None:
        """The price a max_cost budget charges at (found once), in the budget's currency; None
        without a max_cost. Raises before anything is sent when it cannot be known."""
        limit = self.meter.budget.cost_limit
        if limit is None:
            return None
        if self._price is None:
            price = price_of(self.inner)
            if price.currency != limit.currency:
                raise UnsupportedFeatureError(
                    self.name,
                    f"charge its {price.currency} price to a budget in {limit.currency}",
                    f"give the budget currency={price.currency!r}, or the backend a price in "
                    f"{limit.currency}",
                )
            self._price = price
        return self._price

    def __repr__(self) -> str:
        return f"<lmprog {self.name}, budgeted>"
