"""Tree of thought: propose several next steps, score each, keep the best, go one level deeper.

At each level the program forks `WIDTH` branches off the plan so far. Every branch samples a
candidate step (its own seed, so the branches differ and each run is reproducible) and asks the
model whether that step helps, with `lp.select` over " yes" / " no" after a few labelled
judgements; a candidate's score is the log-odds of " yes" from `get_meta_info`. The best
candidate is appended to the plan in the parent state and the next level forks from there. The
branches share the plan's prefix and decode concurrently.

Honest note: Gemma 3 270M is a weak judge. Its scores push off-topic steps (it likes to copy
steps from the examples) below on-topic ones, but rank sensible steps only loosely; the example
shows the search structure (fork, score, keep the best, repeat), which pays off with a
stronger model running the same program. Run with:

    .venv/bin/python examples/tree_of_thought.py
"""

from __future__ import annotations

import lmprog as lp

WIDTH, DEPTH = 3, 2

# How the model judges a step: labelled examples, on problems other than the one to solve.
JUDGE_EXAMPLES = (
    "Step: Water the tree well.\nHelps to plant a tree: yes\n"
    "Step: Boil the pasta for ten minutes.\nHelps to plant a tree: no\n"
    "Step: Dig a hole in the garden.\nHelps to cook dinner: no\n"
    "Step: Chop the onions.\nHelps to cook dinner: yes\n\n"
)
# How a plan looks: one short step per line.
PLAN_EXAMPLE = (
    "Problem: Plant a tree.\n"
    "Step 1: Dig a hole twice as wide as the roots.\n"
    "Step 2: Put the tree in the hole and fill it with soil.\n"
    "Step 3: Water the tree well.\n\n"
)


@lp.function
def tree_of_thought(s, goal):
    s += JUDGE_EXAMPLES + PLAN_EXAMPLE + f"Problem: {goal.capitalize()}.\n"
    levels = []
    for level in range(1, DEPTH + 1):
        branches = s.fork(WIDTH)
        # Each branch proposes a step (sampled, its own seed) and judges it; `+=` with a
        # function queues every branch before any value is read, so they decode together.
        branches += lambda i, level=level: (
            f"Step {level}:"
            + lp.gen("step", max_tokens=32, stop="\n", temperature=0.7, seed=10 * level + i)
            + f"\nHelps to {goal}:"
            + lp.select("helps", [" yes", " no"])
        )
        branches.join()
        candidates = []
        for branch in branches:
            yes, no = branch.get_meta_info("helps")["scores"]
            candidates.append({"step": branch["step"].strip(), "score": yes - no})
        best = max(candidates, key=lambda c: c["score"])
        s += f"Step {level}: {best['step']}\n"  # only the winner continues the plan
        levels.append({"candidates": candidates, "chosen": best["step"]})
    return levels


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    goal = "bake a loaf of bread"
    state = tree_of_thought.run(goal)
    print(f"Problem: {goal}")
    for level, result in enumerate(state.ret_value, start=1):
        print(f"\nlevel {level}: {WIDTH} candidates (score = log-odds of 'helps: yes')")
        for candidate in result["candidates"]:
            mark = "*" if candidate["step"] == result["chosen"] else " "
            print(f"  {mark} {candidate['score']:+.2f}  {candidate['step']}")
    print("\nchosen plan:")
    for level, result in enumerate(state.ret_value, start=1):
        print(f"  Step {level}: {result['chosen']}")


if __name__ == "__main__":
    main()
