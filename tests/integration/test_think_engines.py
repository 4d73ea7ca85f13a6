"""gen(think=...) against real engines: the reasoning span, then an answer that holds to its
constraint, on lp.Local (Gemma and the tiny model) and llama-server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmprog as lp

pytestmark = pytest.mark.engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("target", ["local", "llamacpp"])
def test_sampled_reasoning_never_breaks_the_constraint(
    target: str, tiny_local: lp.Local, tiny: lp.LlamaCpp
) -> None:
    backend: lp.Backend = tiny_local if target == "local" else tiny

    @lp.function
    def prog(s, seed):
        s += "Code:" + lp.gen("v", regex=r"[A-Z]{2}-[0-9]{3}", think_budget=16, seed=seed)

    states = prog.run_batch([(i,) for i in range(6)], backend=backend, temperature=1.0)
    for state in states:
        assert state.error() is None, state.error()
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", state["v"])
        meta = state.get_meta_info("v")
        assert state.text() == f"Code: Reasoning:{meta['reasoning']}\nAnswer:{state['v']}"


@pytest.mark.gemma
def test_the_think_example_reasons_then_answers_with_numbers() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "think.py")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = re.findall(r"  answer: (-?\d+)", done.stdout)
    reasonings = re.findall(r"  reasoning:'([^']+)'", done.stdout)
    assert len(answers) == 2 and len(reasonings) == 2
    assert all("+" in r or "-" in r for r in reasonings)  # it reasoned about the sum
    assert "[typed] Verdict(answer=" in done.stdout
