"""Typed partial streaming: watch a pydantic object fill in while the model writes it.

`state.partial_iter(name)` yields *validated* partial objects of a `gen(type=Model)` as tokens
arrive: fields appear one by one (a string grows as it is written), every value already there
is within its bounds, and the last item is `state[name]`, the complete, validated object. On a
backend that enforces the schema (here: token masks on the default lp.Local) the stream can
never turn invalid. Use `async for` in asyncio code. Run with:

    .venv/bin/python examples/partial_stream.py
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import pydantic

import lmprog as lp


class Recipe(pydantic.BaseModel):
    dish: str
    minutes: Annotated[int, pydantic.Field(ge=1, le=600)]
    ingredients: Annotated[list[str], pydantic.Field(max_length=5)]


FEW_SHOT = (
    "Dish: pancakes\n"
    'JSON: {"dish": "pancakes", "minutes": 20, "ingredients": ["flour", "milk", "eggs"]}\n\n'
)


@lp.function(temperature=0)
def recipe(s, dish):
    s += FEW_SHOT + f"Dish: {dish}\nJSON: "
    s += lp.gen("recipe", type=Recipe, max_tokens=80, stop="\n")


def main() -> None:
    state = recipe.run("tomato soup", stream=True)  # returns at once; the program runs on
    for partial in state.partial_iter("recipe"):
        print(f"  {partial!r}")
    final = state["recipe"]
    print(f"final: {final!r} ({type(final).__name__})")

    async def in_asyncio() -> None:
        state = await recipe.arun("omelette", stream=True)
        count = 0
        async for partial in state.partial_iter("recipe"):
            count += 1
            last = partial
        print(f"async: {count} partial values, the last one: {last!r}")

    asyncio.run(in_asyncio())


if __name__ == "__main__":
    main()
