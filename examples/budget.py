"""Budgets: a loop that retries until it likes the answer cannot run up an unbounded bill.

The program keeps sampling words until one starts with "zq" (no English word does, so the loop
would never end on its own). `budget=lp.Budget(max_requests=...)` stops it cleanly: the
request that would go over is never sent, the program's state carries
`lp.BudgetExceededError`, and everything it produced so far is kept. A batch shares one
budget across all its programs. Run with:

    .venv/bin/python examples/budget.py
"""

from __future__ import annotations

import lmprog as lp


@lp.function
def find_z_word(s):
    s += "Words that start with the letter z: zebra, zero, zone,"
    tries = 0
    while True:  # no limit here: the budget is the limit
        tries += 1
        with s.copy() as attempt:
            attempt += lp.gen("word", max_tokens=4, stop=",", temperature=1.0, seed=tries)
            word = attempt["word"].strip()
        if word.startswith("zq"):
            return word


@lp.function(temperature=0)
def label(s, text):
    s += "Text: The final ended 3-0.\nTopic: sport\nText: Bread prices rose.\nTopic: economy\n"
    s += f"Text: {text}\nTopic:" + lp.gen("topic", max_tokens=4, stop="\n")


def main() -> None:
    state = find_z_word.run(budget=lp.Budget(max_requests=6))
    if state.error() is None:
        print(f"[retry loop] found {state.ret_value!r}")
    else:
        print(f"[retry loop] stopped: {state.error().cause}")

    texts = ["The match ended 2-1.", "Stocks fell today.", "A new vaccine works.", "Rain soon."]
    states = label.run_batch([(t,) for t in texts], max_concurrency=1,
                             budget=lp.Budget(max_tokens=100))  # fmt: skip
    for text, state in zip(texts, states, strict=True):
        outcome = state["topic"].strip() if state.error() is None else state.error().cause
        print(f"[batch] {text!r}: {outcome}")


if __name__ == "__main__":
    main()
