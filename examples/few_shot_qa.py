"""Few-shot question answering over a batch of questions.

A base model such as Gemma 3 270M answers best when the prompt shows it the format: a few
solved Q/A pairs, then the new question. `run_batch` runs one program per question
concurrently; on `lp.Local` they decode together, and the shared few-shot prefix is computed
once and served from the radix cache to the others (see `cached_tokens`). A 270M model knows
common facts; ask it something obscure and it answers just as confidently, and wrongly.
Run with:

    .venv/bin/python examples/few_shot_qa.py
"""

from __future__ import annotations

import lmprog as lp

FEW_SHOT = (
    "Answer each question with a few words.\n\n"
    "Q: What is the capital of Italy?\nA: Rome\n\n"
    "Q: Who wrote Romeo and Juliet?\nA: William Shakespeare\n\n"
    "Q: How many legs does a spider have?\nA: Eight\n\n"
)

QUESTIONS = [
    "What is the largest planet in the solar system?",
    "Who painted the Mona Lisa?",
    "What language is spoken in Brazil?",
    "What is the capital of Japan?",
    "Which ocean is the largest?",
    "What is the boiling point of water in Celsius?",
]


@lp.function(temperature=0)  # greedy: the same answers on every run
def qa(s, question):
    s += FEW_SHOT + f"Q: {question}\nA:"
    # The answer ends at the end of its line, as every answer in the examples does.
    s += lp.gen("answer", max_tokens=12, stop="\n")


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    states = qa.run_batch([(q,) for q in QUESTIONS], progress_bar=True)
    for question, state in zip(QUESTIONS, states, strict=True):
        meta = state.get_meta_info("answer")
        print(
            f"Q: {question}\nA: {state['answer'].strip()}"
            f"  ({meta['cached_tokens']}/{meta['prompt_tokens']} prompt tokens from the cache)"
        )


if __name__ == "__main__":
    main()
