"""The prefix-cache report: prompt tokens sent, served from the engine's cache, and computed.

The numbers are the engine's own, as each backend reads them back per request: llama-server's
`timings` (`cache_n` cached, `prompt_n` computed), vLLM's and the OpenAI API's
`usage.prompt_tokens_details.cached_tokens`, SGLang's `meta_info.cached_tokens`, lp.Local's
radix cache. A count the engine did not report stays unknown (None), never 0: a missing count
must not read as a 0% hit rate. A select's scoring requests report no counts (the backends
score choices through several internal calls), so selects are listed but not counted.

Each counted request also carries its cost where the backend's price is known (lmprog.budget
prices it from the same counts); the report's total cost is unknown once one request's is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lmprog.pricing import Cost

if TYPE_CHECKING:
    from lmprog.state import ProgramState


@dataclass(frozen=True)
class CacheRow:
    """The requests of one primitive (`gen('answer')`): one request, or a sum of them."""

    primitive: Literal["gen", "select"]
    name: str | None
    requests: int
    prompt_tokens: int | None  # None: the engine did not report it (always None for a select)
    cached_tokens: int | None
    cost: Cost | None = None  # None: no price known for the backend, or no counts reported

    @property
    def computed_tokens(self) -> int | None:
        return _minus(self.prompt_tokens, self.cached_tokens)

    @property
    def hit_rate(self) -> float | None:
        return _rate(self.cached_tokens, self.prompt_tokens)

    def __add__(self, other: CacheRow) -> CacheRow:
        return CacheRow(
            self.primitive,
            self.name,
            self.requests + other.requests,
            _plus(self.prompt_tokens, other.prompt_tokens),
            _plus(self.cached_tokens, other.cached_tokens),
            _total_cost((self.cost, other.cost)),
        )

    @property
    def counted(self) -> bool:
        """Whether its requests carry token counts: every gen's, and a select's only when it
        was a generation (lp.constrained_decoding), not a scoring pass."""
        return self.primitive == "gen" or self.prompt_tokens is not None

    def __str__(self) -> str:
        label = f"{self.primitive}({self.name!r})" if self.name else f"{self.primitive}()"
        if not self.counted:
            return f"{label}: {_count(self.requests, 'select')}, not counted"
        summary = _summary(self.requests, self.prompt_tokens, self.cached_tokens)
        return f"{label}: {summary}" + ("" if self.cost is None else f", cost {self.cost}")


@dataclass(frozen=True)
class CacheReport:
    """Totals over every counted request, and one row per primitive: a state's own, in the
    order they ran, then its forks'.

    `requests` counts gen requests (a gen with n=k is k requests) and selects decoded by the
    engine (lp.constrained_decoding); `uncounted_selects` the scored selects, whose scoring
    requests carry no token counts.
    """

    rows: tuple[CacheRow, ...] = ()
    requests: int = field(init=False)
    prompt_tokens: int | None = field(init=False)
    cached_tokens: int | None = field(init=False)
    computed_tokens: int | None = field(init=False)
    hit_rate: float | None = field(init=False)
    uncounted_selects: int = field(init=False)
    cost: Cost | None = field(init=False)  # of every counted request; None if one's is unknown

    def __post_init__(self) -> None:
        merged: dict[tuple[str, str | None], CacheRow] = {}
        for row in self.rows:
            key = (row.primitive, row.name)
            merged[key] = merged[key] + row if key in merged else row
        gens = [row for row in merged.values() if row.counted]
        selects = [row for row in merged.values() if not row.counted]
        prompt = _total(row.prompt_tokens for row in gens)
        cached = _total(row.cached_tokens for row in gens)
        computed = {
            "rows": tuple(merged.values()),
            "requests": sum(row.requests for row in gens),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "computed_tokens": _minus(prompt, cached),
            "hit_rate": _rate(cached, prompt),
            "uncounted_selects": sum(row.requests for row in selects),
            "cost": _total_cost(row.cost for row in gens),
        }
        for name, value in computed.items():
            object.__setattr__(self, name, value)

    @staticmethod
    def merge(reports: Iterable[CacheReport]) -> CacheReport:
        """One report for several (a batch's programs): totals and rows summed."""
        return CacheReport(tuple(row for report in reports for row in report.rows))

    def table(self) -> str:
        """The report as plain text: the totals, then one line per primitive."""
        return "\n".join([str(self), *(f"  {row}" for row in self.rows)])

    def __str__(self) -> str:
        text = "prefix cache: " + _summary(self.requests, self.prompt_tokens, self.cached_tokens)
        if self.uncounted_selects:
            text += f"; {_count(self.uncounted_selects, 'select')} not counted"
        if self.cost is not None:
            text += f"; cost {self.cost}"
        return text


def cache_report(states: Iterable[ProgramState]) -> CacheReport:
    """The batch summary: every state's report (forks included) merged into one."""
    return CacheReport.merge(state.cache_report() for state in states)


def _summary(requests: int, prompt: int | None, cached: int | None) -> str:
    parts = [_count(requests, "request")]
    parts.append("prompt tokens unknown" if prompt is None else f"{prompt:,} prompt tokens")
    if cached is None:
        parts.append("cached tokens unknown (not reported by the engine)")
    else:
        rate = _rate(cached, prompt)
        parts.append(f"{cached:,} cached" + ("" if rate is None else f" ({rate:.0%})"))
        computed = _minus(prompt, cached)
        if computed is not None:
            parts.append(f"{computed:,} computed")
    return ", ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _total(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _total_cost(costs: Iterable[Cost | None]) -> Cost | None:
    """The sum, or None when one is unknown or they are in different currencies."""
    total: Cost | None = None
    for cost in costs:
        if cost is None or (total is not None and cost.currency != total.currency):
            return None
        total = cost if total is None else total + cost
    return total


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def _rate(part: int | None, whole: int | None) -> float | None:
    return None if part is None or not whole else part / whole
