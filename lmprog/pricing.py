"""What tokens cost: a price set on a backend (`lp.Price`, for self-hosted models) or the
maintained price table of genai-prices (hosted models, found by model name and API URL).

A request's cost comes from its own counts, as the engine reported them: prompt tokens served
from the engine's prefix cache are priced as cached input, the other prompt tokens as input,
completion tokens as output. Amounts are Decimals, so sums over a batch do not drift.
genai-prices is imported on the first table lookup, not with lmprog (it takes a quarter second).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from lmprog.errors import LmprogError

Amount = Decimal | float | int | str
OPENAI_API_URL = "https://api.openai.com/v1"  # where lp.OpenAI goes without base_url=


def money(value: Amount, what: str) -> Decimal:
    """`value` as a Decimal (a float through its shortest repr: 0.1 stays 0.1), checked >= 0."""
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite amount of 0 or more, got {value!r}")
    return amount


def currency_code(value: str, what: str) -> str:
    """`value` as an upper-case currency code ("usd" -> "USD"), checked to be letters."""
    if not value or not value.isalpha():
        raise ValueError(f"{what} must be a code like 'USD', got {value!r}")
    return value.upper()


@dataclass(frozen=True)
class Cost:
    """An amount of money in one currency."""

    amount: Decimal
    currency: str = "USD"

    def __add__(self, other: Cost) -> Cost:
        if other.currency != self.currency:
            raise LmprogError(
                f"cannot add costs in {self.currency} and {other.currency}: give every backend "
                "a price in the same currency"
            )
        return Cost(self.amount + other.amount, self.currency)

    def __str__(self) -> str:
        return f"{_significant(self.amount)} {self.currency}"


class Pricer(Protocol):
    """A price: turns one request's token counts into a cost."""

    @property
    def currency(self) -> str: ...

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Cost: ...


@dataclass(frozen=True, init=False)
class Price:
    """What a backend's tokens cost, per `per` tokens (a million by default), in `currency`.

    `cached_input` prices prompt tokens the engine served from its prefix cache (None: the same
    as `input`). Set it on a backend: `backend.price = lp.Price(input=0.10, output=0.40)`.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    per: int
    currency: str

    def __init__(
        self,
        input: Amount,
        output: Amount,
        cached_input: Amount | None = None,
        per: int = 1_000_000,
        currency: str = "USD",
    ) -> None:
        if not isinstance(per, int) or per <= 0:
            raise ValueError(f"lp.Price(per=...) must be a whole number of tokens, got {per!r}")
        object.__setattr__(self, "input", money(input, "lp.Price(input=...)"))
        object.__setattr__(self, "output", money(output, "lp.Price(output=...)"))
        cached = None if cached_input is None else money(cached_input, "lp.Price(cached_input=...)")
        object.__setattr__(self, "cached_input", cached)
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "currency", currency_code(currency, "lp.Price(currency=...)"))

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Cost:
        """What one request's tokens cost (`cached_tokens` of its prompt tokens at the cached
        rate)."""
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (prompt_tokens - cached_tokens) * self.input
            + cached_tokens * cached_rate
            + completion_tokens * self.output
        )
        return Cost(total / self.per, self.currency)


@dataclass(frozen=True)
class TablePrice:
    """A hosted model's price in genai-prices' table (in USD): `model` at the API `api_url`."""

    model: str
    api_url: str
    currency: str = "USD"

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Cost:
        import genai_prices

        usage = genai_prices.Usage(
            input_tokens=prompt_tokens,
            cache_read_tokens=cached_tokens,
            output_tokens=completion_tokens,
        )
        priced = genai_prices.calc_price(usage, self.model, provider_api_url=self.api_url)
        return Cost(priced.total_price, self.currency)


def table_price(model: str, api_url: str) -> TablePrice:
    """The price table's entry for `model` at `api_url`. LookupError when it has none, as for
    any server that is not a known provider's API: a self-hosted model is never priced as the
    hosted one that shares its name."""
    missing = _missing_from_table(model, api_url)
    if missing is not None:
        raise LookupError(missing)
    return TablePrice(model, api_url)


@functools.lru_cache(maxsize=256)
def _missing_from_table(model: str, api_url: str) -> str | None:
    """Why the table has no price for `model` at `api_url` (None: it has one). Asked once per
    pair: every request of an unpriced backend asks again."""
    try:
        TablePrice(model, api_url).cost(0, 0, 0)  # finds the provider and the model, or says
    except LookupError as exc:
        return f"genai-prices has no price for {model!r} at {api_url} ({exc})"
    return None


def _significant(amount: Decimal, digits: int = 6) -> str:
    """`amount` to `digits` significant digits, in plain notation (0.0000123, not 1.23E-5)."""
    if amount == 0:
        return "0"
    places = max(2, digits - amount.adjusted() - 1)
    return f"{round(amount, places).normalize():f}"
