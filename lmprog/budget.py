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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from lmprog.backends.base import (
    Backend,
    GenerateRequest,
    Generation,
    TextCallback,
    WrappedBackend,
    retries_charged_to,
)
from lmprog.choices import ChoiceLogprobs, ChoicesMethod
from lmprog.errors import BudgetExceededError


@dataclass(frozen=True)
class Budget:
    """Limits for one run or one batch (None: no limit)."""

    max_tokens: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass
class Spent:
    tokens: int = 0
    requests: int = 0
    retries: int = 0


class BudgetMeter:
    """What a run or batch has spent so far, checked against its budget."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.spent = Spent()
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
            self.spent.requests += count

    def add_tokens(self, generation: Generation) -> None:
        with self._lock:
            self.spent.tokens += (generation.prompt_tokens or 0) + (
                generation.completion_tokens or 0
            )

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

    async def generate(
        self, request: GenerateRequest, on_text: TextCallback | None = None
    ) -> Generation:
        self.meter.take_requests()
        with retries_charged_to(self.meter.take_retry):
            generation = await self.inner.generate(request, on_text)
        self.meter.add_tokens(generation)
        return generation

    async def score_choices(
        self, context: GenerateRequest, choices: tuple[str, ...], method: ChoicesMethod
    ) -> list[ChoiceLogprobs]:
        per_choice = 2 if method.requires_unconditional_logprobs else 1
        self.meter.take_requests(per_choice * len(choices))
        with retries_charged_to(self.meter.take_retry):
            return await self.inner.score_choices(context, choices, method)

    async def warm(self, prompt: str) -> None:
        self.meter.take_requests()
        with retries_charged_to(self.meter.take_retry):
            await self.inner.warm(prompt)

    def __repr__(self) -> str:
        return f"<lmprog {self.name}, budgeted>"
