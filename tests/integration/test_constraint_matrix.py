"""Every (backend, constraint) pair against real servers: a valid output or
UnsupportedFeatureError, nothing else. The table in docs/backends.md is this test's output."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest

import lmprog as lp

pytestmark = pytest.mark.engine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "backends.md"
START, END = "<!-- constraint-matrix:start -->", "<!-- constraint-matrix:end -->"


class Point(pydantic.BaseModel):
    x: int
    y: int


def weather(city: Literal["Paris", "Rome"]) -> str:
    return f"sunny in {city}"


# name -> (primitive to generate, check of the value)
CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], bool]]] = {
    "regex": (
        lambda: lp.gen("v", regex=r"[a-c]{2}-\d", max_tokens=12),
        lambda v: re.fullmatch(r"[a-c]{2}-\d", v) is not None,
    ),
    "json_schema": (
        lambda: lp.gen(
            "v",
            json_schema={
                "type": "object",
                "properties": {"k": {"enum": ["a", "b"]}},
                "required": ["k"],
                "additionalProperties": False,
            },
            max_tokens=400,
        ),
        lambda v: v in ({"k": "a"}, {"k": "b"}),
    ),
    "type=int": (lambda: lp.gen("v", type=int, max_tokens=24), lambda v: isinstance(v, int)),
    "type=pydantic": (
        lambda: lp.gen("v", type=Point, max_tokens=400),
        lambda v: isinstance(v, Point),
    ),
    "choices": (lambda: lp.gen("v", choices=["yes", "no"]), lambda v: v in ("yes", "no")),
    "grammar (GBNF)": (
        lambda: lp.gen("v", grammar='root ::= "n=" [0-9] [0-9]?', max_tokens=8),
        lambda v: re.fullmatch(r"n=\d\d?", v) is not None,
    ),
    "grammar (Lark)": (
        lambda: lp.gen("v", grammar='start: "n=" /[0-9]/', max_tokens=8),
        lambda v: re.fullmatch(r"n=\d", v) is not None,
    ),
    "select (unconditional)": (
        lambda: lp.select("v", ["up", "down"], lp.unconditional_likelihood_normalized),
        lambda v: v in ("up", "down"),
    ),
    "tools": (
        lambda: lp.gen("v", tools=[weather], max_tokens=400),
        lambda v: isinstance(v, lp.ToolCall) and v.result == weather(**v.arguments),
    ),
}


def outcome(backend: lp.Backend, case: str, chat: bool) -> str:
    make, valid = CASES[case]

    @lp.function
    def constrained(s):
        if chat:
            s += lp.user("Answer.") + lp.assistant(make())
        else:
            s += "Answer: " + make()

    state = constrained.run(backend=backend, temperature=0)
    error = state.error()
    if error is None:
        assert valid(state["v"]), (case, state["v"])
        return "yes"
    assert isinstance(error.cause, lp.UnsupportedFeatureError), (case, error)
    return "refused"


def test_constraint_matrix(matrix_targets: dict[str, tuple[lp.Backend, bool]]) -> None:
    rows = []
    for name, (backend, chat) in matrix_targets.items():
        cells = [outcome(backend, case, chat) for case in CASES]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(
        [
            "| backend | " + " | ".join(CASES) + " |",
            "| --- |" + " --- |" * len(CASES),
            *rows,
        ]
    )
    docs = DOCS.read_text()
    current = docs[docs.index(START) + len(START) : docs.index(END)].strip()
    if os.environ.get("LMPROG_UPDATE_DOCS") == "1":
        DOCS.write_text(docs.replace(current, table) if current else
                        docs.replace(START + "\n", f"{START}\n{table}\n"))  # fmt: skip
        return
    assert current == table, (
        f"docs/backends.md is out of date (LMPROG_UPDATE_DOCS=1 rewrites it); now:\n{table}"
    )
