"""gen(fallback="validate"): generate, validate, retry — only where asked and needed."""

from __future__ import annotations

import pydantic
import pytest

import lmprog as lp
from lmprog.backends.base import Capabilities, GenerateRequest
from lmprog.testing import ScriptedBackend


class Loose(ScriptedBackend):
    """A backend that enforces no constraint (like a chat API without structured outputs)."""

    capabilities = Capabilities(streaming=True)


class Point(pydantic.BaseModel):
    x: int
    y: int


def answers(*texts: str) -> Loose:
    queue = list(texts)
    return Loose(lambda request: queue.pop(0) if len(queue) > 1 else queue[0])


@lp.function
def number(s):
    s += "n=" + lp.gen("n", regex=r"\d{1,3}", fallback="validate", max_attempts=3)


@lp.function
def point(s):
    s += "p=" + lp.gen("p", type=Point, fallback="validate", max_attempts=2)


def test_without_fallback_an_unenforceable_constraint_is_refused_before_any_request() -> None:
    @lp.function
    def plain(s):
        s += lp.gen("n", regex=r"\d+")

    backend = answers("12")
    state = plain.run(backend=backend)
    assert isinstance(state.error().cause, lp.UnsupportedFeatureError)
    assert backend.requests == []


def test_a_valid_first_attempt_is_kept_and_the_path_recorded() -> None:
    backend = answers("42")
    state = number.run(backend=backend)
    assert state["n"] == "42"
    assert state.get_meta_info("n")["constraint_path"] == "validated after 1 attempt"
    assert backend.requests[0].constraint is None  # sent unconstrained: the backend can't


def test_invalid_attempts_are_retried_and_leave_no_text_behind() -> None:
    backend = answers("no idea", "x", "7")
    state = number.run(backend=backend, stream=True)
    assert state["n"] == "7"
    assert state.text() == "n=7"
    assert state.get_meta_info("n")["constraint_path"] == "validated after 3 attempts"
    assert len(backend.requests) == 3


def test_an_attempt_is_abandoned_as_soon_as_it_cannot_match() -> None:
    streamed: list[str] = []

    class Counting(Loose):
        async def generate(self, request: GenerateRequest, on_text=None):  # type: ignore[no-untyped-def]
            def count(piece: str) -> None:
                streamed.append(piece)
                assert on_text is not None
                on_text(piece)

            return await super().generate(request, count if on_text else None)

    backend = Counting(lambda request: "abc" + "z" * 3000)
    state = number.run(backend=backend)
    error = state.error()
    assert isinstance(error.cause, lp.ConstraintError)
    assert "in 3 attempts" in str(error) and "stopped early" in str(error)
    assert len(streamed) <= 3 * 2  # each attempt stopped after its first piece or two


def test_json_is_validated_and_typed() -> None:
    state = point.run(backend=answers('{"x": 1, "y": "two"}', '{"x": 1, "y": 2}'))
    assert state["p"] == Point(x=1, y=2)
    assert state.get_meta_info("p")["constraint_path"] == "validated after 2 attempts"


def test_after_max_attempts_the_error_lists_every_failure() -> None:
    state = point.run(backend=answers('{"x": 1}', '{"x": 1}'))
    message = str(state.error())
    assert "gen('p')" in message and "2 attempts" in message and "1:" in message


def test_a_backend_that_enforces_the_constraint_does_not_take_the_fallback() -> None:
    backend = ScriptedBackend(lambda request: "5")
    state = number.run(backend=backend)
    assert state.get_meta_info("n")["constraint_path"] == "enforced by server"
    assert backend.requests[0].constraint is not None


def test_grammars_cannot_be_validated_after_the_fact() -> None:
    @lp.function
    def grammar(s):
        s += lp.gen("g", grammar='root ::= "a"', fallback="validate")

    state = grammar.run(backend=answers("a"))
    assert isinstance(state.error().cause, lp.UnsupportedFeatureError)


def test_bad_fallback_arguments_fail_at_once() -> None:
    with pytest.raises(ValueError, match="fallback"):
        lp.gen("x", regex="a", fallback="retry")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        lp.gen("x", regex="a", fallback="validate", max_attempts=0)


def test_numbers_without_bounds_get_sixteen_digits_and_a_schemas_own_bounds_win() -> None:
    """Issue 16: an unbounded integer let a small model write digits until max_tokens."""
    from lmprog.constraints import NUMBER_LIMIT, schema_constraint

    schema = schema_constraint(
        {
            "type": "object",
            "properties": {
                "population": {"type": "integer"},
                "ratio": {"type": ["number", "null"], "minimum": 0},
                "type": {"type": "string"},  # a property named "type" is not a type
                "level": {"type": "integer", "enum": [1, 2]},
            },
        }
    ).schema
    assert schema is not None
    properties = schema["properties"]
    assert properties["population"] == {
        "type": "integer",
        "minimum": -NUMBER_LIMIT,
        "maximum": NUMBER_LIMIT,
    }
    assert (properties["ratio"]["minimum"], properties["ratio"]["maximum"]) == (0, NUMBER_LIMIT)
    assert properties["type"] == {"type": "string"}
    assert "maximum" not in properties["level"]
    assert len(str(NUMBER_LIMIT)) == 16
