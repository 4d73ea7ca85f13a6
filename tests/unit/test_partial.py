"""Partial JSON values (state.partial_iter) and the prefix check behind fallback="validate"."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from lmprog.constraints import make_constraint
from lmprog.partial import PartialJson


class Pet(pydantic.BaseModel):
    name: str
    kind: Literal["cat", "dog"]


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=2)
    age: int = pydantic.Field(ge=0, le=130)
    pets: list[Pet] = pydantic.Field(min_length=1)


FULL = '{"name": "Ada", "age": 36, "pets": [{"name": "Tom", "kind": "cat"}]}'


def test_every_prefix_of_a_valid_value_is_feasible_and_values_only_grow() -> None:
    reader = PartialJson(make_constraint(type=Person))
    seen = []
    for end in range(len(FULL) + 1):
        assert reader.feasible(FULL[:end]), FULL[:end]
        value = reader.value(FULL[:end])
        if value is not None:
            seen.append(value)
    assert seen[-1].model_dump() == Person.model_validate_json(FULL).model_dump()
    names = [v.name for v in seen if v.name]
    assert names[0] == "A" and names[-1] == "Ada"  # an unfinished string shows as it grows
    assert any(v.pets == [] for v in seen)  # a list that has just opened


@pytest.mark.parametrize(
    "prefix",
    [
        '{"name": "Ada", "age": 300,',  # a finished number out of range
        '{"pets": [{"kind": "cow"}',  # a finished string outside the Literal
        '{"name": 5,',  # a finished value of the wrong type
        "hello",  # not JSON at all
        '{"name": "Ada"}}',  # text after the value
    ],
)
def test_a_prefix_that_cannot_become_valid_is_not_feasible(prefix: str) -> None:
    assert not PartialJson(make_constraint(type=Person)).feasible(prefix)


def test_a_number_still_being_written_gets_the_benefit_of_the_doubt() -> None:
    reader = PartialJson(make_constraint(type=Person))
    assert reader.feasible('{"name": "Ada", "age": 1')  # may become 13
    assert reader.feasible('{"name": "Ada", "age": -')  # may become -1? the schema says later


def test_plain_json_schemas_give_dicts_validated_without_required_keys() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer", "maximum": 9}},
        "required": ["city", "n"],
    }
    reader = PartialJson(make_constraint(json_schema=schema))
    assert reader.value('{"city": "Par') == {"city": "Par"}
    assert reader.feasible('{"city": "Paris", "n": 3')
    assert not reader.feasible('{"city": "Paris", "n": 12}')


def test_a_non_json_constraint_is_refused() -> None:
    with pytest.raises(TypeError, match="json_schema"):
        PartialJson(make_constraint(regex=r"\d+"))
