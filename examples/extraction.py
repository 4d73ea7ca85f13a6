"""Structured extraction: sentences in, validated pydantic objects out (`gen(type=Model)`).

`type=Person` turns the model's JSON schema into a token mask, so every output parses and
validates: `state["person"]` is a `Person`, not text (the raw JSON stays in `state.text()`).
The schema guarantees the *shape* — field names, an int within bounds, closed objects — not the
*truth*: a 270M model copies names and numbers from the sentence well but may guess a field the
sentence states in an unusual way, or copy it from the worked example instead (see the pilot's
job). That one worked example in the prompt shows the model what goes where. Run with:

    .venv/bin/python examples/extraction.py
"""

from __future__ import annotations

from typing import Annotated

import pydantic

import lmprog as lp


class Person(pydantic.BaseModel):
    name: str
    age: Annotated[int, pydantic.Field(ge=0, le=130)]  # bounds are part of the mask too
    city: str
    job: str


FEW_SHOT = (
    "Text: Tom Becker is a 52-year-old baker from Hamburg.\n"
    'JSON: {"name": "Tom Becker", "age": 52, "city": "Hamburg", "job": "baker"}\n\n'
)

TEXTS = [
    "Maria Garcia, 34, works as a nurse in Madrid.",
    "The architect Kenji Sato (41) lives in Osaka.",
    "Born 29 years ago, Lena Novak now teaches math in Prague.",
    "Our new pilot, Ahmed Khan, is 38 and is based in Dubai.",
]


@lp.function(temperature=0)  # greedy: the same objects on every run
def extract(s, text):
    s += FEW_SHOT + f"Text: {text}\nJSON: "
    s += lp.gen("person", type=Person, max_tokens=60)


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    states = extract.run_batch([(text,) for text in TEXTS])
    people = [state["person"] for state in states]
    for text, person in zip(TEXTS, people, strict=True):
        print(f"{text}\n  -> {person!r}")
    # They are ordinary pydantic objects: sort, filter, serialise.
    oldest = max(people, key=lambda p: p.age)
    print(f"\nOldest: {oldest.name} ({oldest.age})")
    print(f"As JSON: {oldest.model_dump_json()}")


if __name__ == "__main__":
    main()
