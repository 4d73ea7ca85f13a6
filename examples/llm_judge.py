"""LLM as a judge: score an answer on several dimensions, one fork per dimension, then report.

The judge prompt shows a few rated examples, then the question and answer to rate. The program
forks one branch per dimension (relevance, clarity, accuracy); each branch writes its
dimension's label and generates a score under `regex=" [1-5]"`, so the score is always a digit
from 1 to 5 and `int()` never fails. The branches share the whole prompt as their prefix and
decode together; `join()` brings the scores back to the parent, which combines them.

Honest note: Gemma 3 270M is a weak judge. It tells an off-topic answer from an on-topic one
(relevance) and a mumbled answer from a clean one (clarity) fairly well, but it cannot check
facts (accuracy), and its scores lean on the rated examples and their order. The program is
the same with a stronger judge model. Run with:

    .venv/bin/python examples/llm_judge.py
"""

from __future__ import annotations

import lmprog as lp

DIMENSIONS = ["Relevance", "Clarity", "Accuracy"]

# Rated examples: (question, answer, relevance, clarity, accuracy).
MUMBLED = "uh the mona lisa it was maybe painted by leonardo i think"
RATED = [
    ("What is the capital of France?", "The capital of France is Paris.", 5, 5, 5),
    ("Why do we need sleep?", "My cat likes the color blue.", 1, 3, 1),
    ("How many legs does a spider have?", "Spiders have six legs.", 5, 5, 1),
    ("What is the largest ocean?", "The Pacific Ocean is the largest ocean.", 5, 5, 5),
    ("Who painted the Mona Lisa?", MUMBLED, 5, 2, 4),
    ("What do bees make?", "Cars need petrol to drive.", 1, 4, 1),
]
JUDGE_PROMPT = "Rate each answer from 1 (bad) to 5 (excellent).\n\n" + "".join(
    f"Question: {question}\nAnswer: {answer}\n"
    + "".join(
        f"{dimension}: {score}\n" for dimension, score in zip(DIMENSIONS, scores, strict=True)
    )
    + "\n"
    for question, answer, *scores in RATED
)

TO_JUDGE = [
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    ("What is the boiling point of water at sea level?", "Bananas are yellow and grow on trees."),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
    ("Who wrote Hamlet?", "hamlet uh was by some guy maybe charles dickens or so"),
]


@lp.function(temperature=0)  # greedy: the same scores on every run
def judge(s, question, answer):
    s += JUDGE_PROMPT + f"Question: {question}\nAnswer: {answer}\n"
    branches = s.fork(len(DIMENSIONS))
    branches += lambda i: f"{DIMENSIONS[i]}:" + lp.gen("score", regex=" [1-5]")
    branches.join()
    return {
        dimension: int(branch["score"])
        for dimension, branch in zip(DIMENSIONS, branches, strict=True)
    }


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    states = judge.run_batch(TO_JUDGE)
    header = "  ".join(f"{d:>9}" for d in DIMENSIONS)
    print(f"{header}  {'mean':>5}  answer")
    for (question, answer), state in zip(TO_JUDGE, states, strict=True):
        scores = state.ret_value
        mean = sum(scores.values()) / len(scores)
        cells = "  ".join(f"{scores[d]:>9}" for d in DIMENSIONS)
        print(f"{cells}  {mean:>5.2f}  {question} -> {answer}")


if __name__ == "__main__":
    main()
