"""Money budgets: a batch stops cleanly once it has spent what it was given.

`budget=lp.Budget(max_cost=...)` prices every request from the token counts the engine reports
for it: prompt tokens served from the engine's prefix cache at the cached rate, the rest at the
input rate, completion tokens at the output rate. Hosted models (lp.OpenAI, lp.Anthropic, ...)
are priced from the genai-prices table; a self-hosted model, like the default backend here,
needs its price set: `backend.price = lp.Price(...)`. Before each request lmprog checks what the
batch has spent; once the budget is reached no further request is sent, the programs that
finished keep their results and the others carry `lp.BudgetExceededError`. Run with:

    .venv/bin/python examples/budgeted_batch.py
"""

from __future__ import annotations

import lmprog as lp

INSTRUCTION = (
    "Give the topic of each headline in one word.\n"
    "Headline: The final ended 3-0 after extra time.\nTopic: sport\n"
    "Headline: Bread prices rose for the third month.\nTopic: economy\n"
)


@lp.function(temperature=0)
def topic(s, headline):
    s += INSTRUCTION + f"Headline: {headline}\nTopic:" + lp.gen("topic", max_tokens=6, stop="\n")


def main() -> None:
    backend = lp.Local()  # the default backend: Gemma 3 270M, on this machine
    # what its tokens cost, in USD per million tokens (here: a small hosted model's rates)
    backend.price = lp.Price(input=0.15, output=0.60, cached_input=0.075)
    budget = lp.Budget(max_cost=0.00002)  # USD, for the whole batch

    headlines = [
        "Stocks fell sharply today.",
        "The striker scored twice.",
        "A new vaccine was approved.",
        "Heavy rain is expected tomorrow.",
        "The central bank raised rates.",
        "The team lost the derby.",
    ]
    states = topic.run_batch(
        [(h,) for h in headlines], backend=backend, max_concurrency=1, budget=budget
    )
    for headline, state in zip(headlines, states, strict=True):
        if state.error() is None:
            print(f"[done] {headline!r}: {state['topic'].strip()}")
        else:
            print(f"[stopped] {headline!r}: {state.error().cause}")

    report = states.cache_report()
    print(f"[cost] {report.cost} spent of a {budget.cost_limit} budget")
    print(f"[report] {report}")


if __name__ == "__main__":
    main()
