"""Budgets against real engines: the tokens the engine reports are what is charged (in money:
at the backend's price, cached prompt tokens at the cached rate), and a batch stops cleanly
when its budget runs out."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import lmprog as lp

pytestmark = pytest.mark.engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@lp.function
def item(s, i):
    s += f"Item {i}:" + lp.gen("v", max_tokens=8, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("target", ["local", "llamacpp"])
def test_a_batch_stops_at_its_token_budget(
    target: str, tiny_local: lp.Local, tiny: lp.LlamaCpp
) -> None:
    backend: lp.Backend = tiny_local if target == "local" else tiny
    states = item.run_batch(
        [(i,) for i in range(20)],
        backend=backend,
        max_concurrency=1,
        budget=lp.Budget(max_tokens=60),
    )
    done = [s for s in states if s.error() is None]
    spent = sum(
        s.get_meta_info("v")["prompt_tokens"] + s.get_meta_info("v")["completion_tokens"]
        for s in done
    )
    assert 0 < len(done) < 20
    assert spent - 20 < 60 <= spent  # the last request started under the limit
    assert all(isinstance(s.error().cause, lp.BudgetExceededError) for s in states[len(done) :])


PRICE = lp.Price(input=1, output=4, cached_input=0.25, per=1_000)  # USD per thousand tokens


@pytest.fixture(params=["local", "llamacpp"])
def priced(request: pytest.FixtureRequest, tiny_local: lp.Local) -> Iterator[lp.Backend]:
    """A backend of its own with PRICE set (the session's backends stay unpriced)."""
    if request.param == "llamacpp":
        backend: lp.Backend = lp.LlamaCpp(request.getfixturevalue("tiny_server").url)
    else:
        backend = tiny_local
    backend.price = PRICE
    yield backend
    backend.price = None


def test_a_batch_stops_at_its_money_budget_charging_the_engines_own_counts(
    priced: lp.Backend,
) -> None:
    used_before = priced.token_usage.prompt_tokens + priced.token_usage.completion_tokens
    limit = Decimal("0.2")
    budget = lp.Budget(max_cost=limit)
    states = item.run_batch(
        [(i,) for i in range(20)], backend=priced, max_concurrency=1, budget=budget
    )
    done = [s for s in states if s.error() is None]
    assert 0 < len(done) < 20
    assert all(isinstance(s.error().cause, lp.BudgetExceededError) for s in states[len(done) :])
    assert f"the budget of {limit} USD is spent" in str(states[len(done)].error())
    # each request's cost, from the counts the engine reported for it (meta info)
    counts = [s.get_meta_info("v") for s in done]
    costs = [
        (m["prompt_tokens"] - m["cached_tokens"]) * PRICE.input
        + m["cached_tokens"] * PRICE.cached_input
        + m["completion_tokens"] * PRICE.output
        for m in counts
    ]
    spent = sum(costs) / PRICE.per
    assert any(m["cached_tokens"] > 0 for m in counts)  # the cached rate was used
    assert states.cache_report().cost == lp.Cost(spent, "USD")
    assert spent - costs[-1] / PRICE.per < limit <= spent  # the last one started under it
    # and the engine's counters saw exactly the requests that were charged
    usage = priced.token_usage
    charged = sum(m["prompt_tokens"] + m["completion_tokens"] for m in counts)
    assert usage.prompt_tokens + usage.completion_tokens - used_before == charged


@pytest.mark.gemma
def test_the_budget_example_stops_its_retry_loop_and_its_batch() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "budget.py")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[retry loop] stopped: the budget of 6 requests is spent" in done.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith("[batch]")]
    assert len(lines) == 4 and "budget of 100 tokens is spent" in lines[-1]
    assert "budget" not in lines[0]
