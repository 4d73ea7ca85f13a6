"""Skeleton of thought: outline the answer first, then expand every point in parallel.

Step 1 generates a skeleton of exactly `POINTS` numbered points, held to that shape by a regex
(numbers, short phrases, one per line), so the program can split it without guessing. Step 2
forks one branch per point (`s.fork(n)`): each branch shares the question and skeleton as its
prefix and expands its own point; the branches decode together instead of one after the other.
Step 3 joins them and writes the assembled answer back into the parent state.

Gemma 3 270M makes a sensible skeleton for an everyday question, but its expansions are short
and sometimes just restate the point; the structure is the lesson. Run with:

    .venv/bin/python examples/skeleton_of_thought.py
"""

from __future__ import annotations

import lmprog as lp

POINTS = 3
# A point: a capitalised phrase of lowercase words. Each line ends with a newline, so the
# skeleton ends where the model ends its third line (no endless last point).
SKELETON = "".join(rf"{i}\. [A-Z][a-z]+( [a-z]+)*\n" for i in range(1, POINTS + 1))

# Two worked examples: a skeleton, then each point expanded in one sentence.
EXAMPLES = (
    "Question: How can I sleep better?\nSkeleton:\n"
    "1. Keep a fixed bedtime\n2. Avoid screens at night\n3. Keep the bedroom dark\n"
    "Point 1, Keep a fixed bedtime: Go to bed and get up at the same time every day.\n"
    "Point 2, Avoid screens at night: Put your phone away an hour before bed.\n"
    "Point 3, Keep the bedroom dark: Use thick curtains or an eye mask.\n\n"
    "Question: What should I pack for a beach trip?\nSkeleton:\n"
    "1. Sun protection\n2. Something to drink\n3. Things to sit on\n"
    "Point 1, Sun protection: Bring sunscreen, a hat and sunglasses.\n"
    "Point 2, Something to drink: Fill a large bottle with cold water.\n"
    "Point 3, Things to sit on: Pack a big towel or a folding chair.\n\n"
)


@lp.function(temperature=0)  # greedy: the same answer on every run
def skeleton_of_thought(s, question):
    s += EXAMPLES + f"Question: {question}\nSkeleton:\n"
    # frequency_penalty discourages the small model from repeating its first point.
    s += lp.gen("skeleton", regex=SKELETON, max_tokens=60, frequency_penalty=0.5)
    points = [line.split(". ", 1)[1] for line in s["skeleton"].splitlines()]

    branches = s.fork(POINTS)
    branches += lambda i: (
        f"Point {i + 1}, {points[i]}:" + lp.gen("detail", max_tokens=40, stop="\n")
    )
    branches.join()

    expanded = [
        (point, branch["detail"].strip()) for point, branch in zip(points, branches, strict=True)
    ]
    s += "\nAnswer:\n" + "\n".join(
        f"{i}. {point}: {detail}" for i, (point, detail) in enumerate(expanded, start=1)
    )
    return expanded


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    question = "How can I stay healthy in winter?"
    state = skeleton_of_thought.run(question)
    print(f"Question: {question}\n\nSkeleton:\n{state['skeleton']}")
    print("Answer (points expanded in parallel):")
    for i, (point, detail) in enumerate(state.ret_value, start=1):
        print(f"  {i}. {point}: {detail}")


if __name__ == "__main__":
    main()
