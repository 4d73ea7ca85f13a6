"""Classification with `lp.select`: the model scores every label, the best one wins.

`select` does not sample text that might not be a label: it asks the model for the
log-probability of each choice after the prompt and picks the best, so the answer is always
one of the labels. `s.get_meta_info(name)["scores"]` holds every label's score (the mean
log-probability of its tokens with the default `lp.token_length_normalized`), so a program can
also see how sure the model was. Two labelled examples per class, in mixed order, keep a small
base model from leaning on one label (with one example per class, in label order, Gemma 3 270M
called half of these headlines "politics"); `choices_method=
lp.unconditional_likelihood_normalized` is another remedy for such a bias. Run with:

    .venv/bin/python examples/classification.py
"""

from __future__ import annotations

import math

import lmprog as lp

LABELS = ["sports", "politics", "technology", "weather"]

FEW_SHOT = "".join(
    f"Headline: {headline}\nTopic: {label}\n\n"
    for headline, label in [
        ("Heavy snow expected across the north tonight", "weather"),
        ("Striker scores twice as United win the derby", "sports"),
        ("New phone chip doubles battery life", "technology"),
        ("Parliament passes the new budget after a long debate", "politics"),
        ("Temperatures to drop below freezing this weekend", "weather"),
        ("Olympic champion retires at 31", "sports"),
        ("Search engine adds a new AI assistant", "technology"),
        ("Governor signs law on school funding", "politics"),
    ]
)

# Headlines to classify, with the label a person would give (to count the model's hits).
HEADLINES = [
    ("Tennis star wins her third title in a row", "sports"),
    ("Senate votes to confirm the new minister", "politics"),
    ("Startup releases an open-source AI model", "technology"),
    ("Storm brings strong winds and flooding to the coast", "weather"),
    ("Coach fired after five straight losses", "sports"),
    ("President meets prime minister for trade talks", "politics"),
    ("Software update fixes a security flaw in millions of laptops", "technology"),
    ("Sunny skies and warm temperatures all week", "weather"),
]


@lp.function
def classify(s, headline):
    s += FEW_SHOT + f"Headline: {headline}\nTopic:"
    # The leading space matches how the labels follow "Topic:" in the examples.
    s += lp.select("topic", [f" {label}" for label in LABELS])


def shares(scores: list[float]) -> list[float]:
    """The scores as shares of 1 (a softmax over the labels), easier to read than logprobs."""
    weights = [math.exp(score) for score in scores]
    return [weight / sum(weights) for weight in weights]


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    states = classify.run_batch([(headline,) for headline, _ in HEADLINES])
    hits = 0
    for (headline, expected), state in zip(HEADLINES, states, strict=True):
        label = state["topic"].strip()
        hits += label == expected
        scores = state.get_meta_info("topic")["scores"]  # one per label, in LABELS' order
        detail = "  ".join(
            f"{name}={share:.2f}" for name, share in zip(LABELS, shares(scores), strict=True)
        )
        print(f"{label:<10} | {headline}\n           | {detail}")
    print(f"\nagreed with the expected label on {hits}/{len(HEADLINES)} headlines")


if __name__ == "__main__":
    main()
