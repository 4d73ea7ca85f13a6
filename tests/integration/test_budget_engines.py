"""Budgets against real engines: the tokens the engine reports are what is charged, and a
batch stops cleanly when its budget runs out."""

from __future__ import annotations

import subprocess
import sys
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
