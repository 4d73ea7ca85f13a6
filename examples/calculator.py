"""A calculator tool the model calls, with its arithmetic parsed safely (never `eval`ed).

The model writes an arithmetic expression under a regex constraint; lmprog hands it to a
small parser that accepts numbers, + - * / ** and parentheses and nothing else. Model output
is data: even a constraint that let something else through would only meet a parser that
refuses it. Run with:

    bash scripts/setup.sh && .venv/bin/python examples/calculator.py
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

import lmprog as lp

_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def calculate(expression: str) -> float:
    """Evaluate arithmetic safely: a whitelist walk over the syntax tree, no eval."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            right = walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](walk(node.left), right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    return walk(ast.parse(expression, mode="eval").body)


ARITHMETIC = r"\d{1,6} [-+*/] \d{1,6}"

FEW_SHOT = (
    "Question: What is 12 times 7?\nExpression: 12 * 7\nAnswer: 84\n"
    "Question: What is 100 minus 58?\nExpression: 100 - 58\nAnswer: 42\n"
)


@lp.function(temperature=0)
def word_problem(s, question):
    s += FEW_SHOT + f"Question: {question}\nExpression: "
    s += lp.gen("expression", regex=ARITHMETIC, max_tokens=16, stop="\n")
    try:
        result = calculate(s["expression"])
    except (ValueError, SyntaxError, ZeroDivisionError) as exc:
        s += f"\nError: {exc}"
        return None
    s += f"\nAnswer: {result:g}"
    return result


def main() -> None:
    questions = ["What is 6 times 9?", "What is 250 plus 17?", "What is 81 divided by 9?"]
    # No backend given: the built-in default, lp.Local() with Gemma 3 270M in this process.
    states = word_problem.run_batch([(q,) for q in questions])
    for question, state in zip(questions, states, strict=True):
        print(f"{question} -> {state['expression'].strip()} = {state.ret_value}")


if __name__ == "__main__":
    main()
