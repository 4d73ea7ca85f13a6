"""Model output is data: nothing in lmprog or its examples evaluates it as code."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from calculator import calculate  # noqa: E402


def test_no_eval_or_exec_in_the_library_or_examples() -> None:
    calls = []
    for path in [*ROOT.joinpath("lmprog").rglob("*.py"), *ROOT.joinpath("examples").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"eval", "exec"}:
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('true')", "open('/etc/passwd')", "(1).__class__", "2 ** 10000"],
)
def test_the_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError):
        calculate(expression)


def test_the_calculator_computes() -> None:
    assert calculate("6 * 9") == 54
    assert calculate("(1 + 2) / -4") == -0.75
