"""Think, then constrain: free reasoning first, then an answer the constraint holds to.

A constrained gen alone makes the model commit at once (here: to a number). With `think=True`
it first writes a reasoning span (bounded by `think_budget` tokens, between its own reasoning
tags where its chat template has them, else "Reasoning:" ... "Answer:"), and only then is the
answer generated under the constraint. The reasoning is kept in `get_meta_info(name)`, never
parsed as the answer. Runs on the default backend (Gemma 3 270M in this process):

    .venv/bin/python examples/think.py
"""

from __future__ import annotations

import pydantic

import lmprog as lp

FEW_SHOT = (
    "Q: Tom has 3 apples and buys 2 more. How many apples does he have?\n"
    "Reasoning: He starts with 3 and adds 2, and 3 + 2 = 5.\nAnswer: 5\n"
)


class Verdict(pydantic.BaseModel):
    answer: int
    sure: bool


@lp.function(temperature=0)
def word_problem(s, question):
    s += FEW_SHOT + f"Q: {question}\n"
    s += lp.gen("answer", type=int, think_budget=48, think_delimiters=("Reasoning:", "\nAnswer: "))


@lp.function(temperature=0)
def structured(s, question):
    s += FEW_SHOT + f"Q: {question}\n"
    s += lp.gen("verdict", type=Verdict, think=True, max_tokens=30)


def main() -> None:
    for question in [
        "Ann has 4 pens and gets 3 more. How many pens does she have?",
        "A box holds 10 eggs and 2 break. How many eggs are left?",
    ]:
        state = word_problem.run(question)
        meta = state.get_meta_info("answer")
        print(
            f"[think] {question}\n  reasoning:{meta['reasoning']!r}\n  answer: {state['answer']!r}"
        )
    state = structured.run("Sam has 6 cards and gives away 1. How many cards does he have?")
    print(f"[typed] {state['verdict']!r} after {state.get_meta_info('verdict')['reasoning']!r}")


if __name__ == "__main__":
    main()
