"""Partial values of a JSON gen while its text is still arriving (`state.partial_iter`), and
the early check that lets `fallback="validate"` abandon an attempt as soon as it goes wrong.

A prefix of JSON text is read with pydantic's partial JSON parser; the value is then validated
against a *partial* version of the target type, where every field may still be missing and
lists may still be short, but every value already written must be right.
"""

from __future__ import annotations

import json
import re
import types
import typing
from functools import cache, lru_cache
from typing import Any

import annotated_types
import jsonschema
import pydantic
import pydantic_core
from pydantic.fields import FieldInfo

from lmprog.constraints import Constraint

_NUMBER_IN_PROGRESS = re.compile(r"-?[\d.eE+-]*$")
_UNFINISHED = object()
_DECODER = json.JSONDecoder()


class PartialJson:
    """Reads prefixes of the text of a gen under a JSON-schema constraint."""

    def __init__(self, constraint: Constraint) -> None:
        if constraint.kind != "json_schema" or constraint.schema is None:
            raise TypeError("partial values need a gen with json_schema= or a JSON type=")
        self._schema = _loosened(constraint.output_schema)
        self._type = constraint.python_type
        self._adapter = (
            pydantic.TypeAdapter(partial_type(self._type)) if _is_typed(self._type) else None
        )

    def value(self, text: str) -> Any:
        """The value written so far (with an unfinished trailing string as far as it goes, but
        a number only once it is finished), or None when nothing valid can be shown yet."""
        text = _without_number_in_progress(text)
        for mode in ("trailing-strings", "on"):
            data = _parse(text, mode)
            if data is _UNFINISHED:
                return None
            try:
                return self._validated(data)
            except (pydantic.ValidationError, jsonschema.ValidationError):
                continue
        return None

    def feasible(self, text: str) -> bool:
        """False once `text` can no longer be the start of a valid value: a JSON syntax error,
        or a finished value that breaks the schema. Unfinished values are given the benefit
        of the doubt."""
        trimmed = _without_number_in_progress(text)
        if not trimmed.strip():
            return True
        try:
            data = pydantic_core.from_json(trimmed, allow_partial="on")
        except ValueError:
            return False
        if _text_after_value(trimmed):
            return False
        try:
            self._validated(data)
        except (pydantic.ValidationError, jsonschema.ValidationError):
            return False
        return True

    def _validated(self, data: Any) -> Any:
        jsonschema.validate(data, self._schema)
        return data if self._adapter is None else self._adapter.validate_python(data)


def _without_number_in_progress(text: str) -> str:
    """`text` without a trailing number that more digits could still change (`"age": 3` may
    become 36; `36,` is finished)."""
    if text[-1:].isdigit() or text[-1:] in ("-", ".", "e", "E", "+"):
        return _NUMBER_IN_PROGRESS.sub("", text)
    return text


def _parse(text: str, mode: typing.Literal["on", "trailing-strings"]) -> Any:
    if not text.strip():
        return _UNFINISHED
    try:
        return pydantic_core.from_json(text, allow_partial=mode)
    except ValueError:
        return _UNFINISHED


@lru_cache(maxsize=256)
def partial_reader(constraint: Constraint) -> PartialJson:
    """The reader of a constraint, made once: its partial type's TypeAdapter costs
    milliseconds, and the gens of a `type=` share one constraint (constraints are immutable;
    bounded, since a `json_schema=` dict makes a new constraint per gen)."""
    return PartialJson(constraint)


def _text_after_value(text: str) -> bool:
    """Whether a complete JSON value is followed by more text (the partial parser ignores it)."""
    try:
        _, end = _DECODER.raw_decode(text.lstrip())
    except json.JSONDecodeError:
        return False  # not complete yet
    return bool(text.lstrip()[end:].strip())


def _is_typed(python_type: Any) -> bool:
    return python_type is not None and python_type not in (dict, list)


def _loosened(schema: Any) -> Any:
    """The schema with what a prefix cannot meet yet removed: required keys and minimum
    sizes (and `const`/`enum` left alone: a finished value must still match them)."""
    if isinstance(schema, dict):
        dropped = {"required", "minItems", "minProperties", "minLength"}
        return {k: _loosened(v) for k, v in schema.items() if k not in dropped}
    if isinstance(schema, list):
        return [_loosened(item) for item in schema]
    return schema


@cache
def partial_type(python_type: Any) -> Any:
    """`python_type` with every model field optional (None until written) and no minimum
    lengths, recursively through lists, dicts, unions and nested models."""
    if isinstance(python_type, type) and issubclass(python_type, pydantic.BaseModel):
        return _partial_model(python_type)
    origin = typing.get_origin(python_type)
    args = typing.get_args(python_type)
    if origin in (list, typing.List):  # noqa: UP006 - matching what users may write
        return list.__class_getitem__(partial_type(args[0])) if args else list
    if origin in (dict, typing.Dict) and len(args) == 2:  # noqa: UP006
        return dict.__class_getitem__((args[0], partial_type(args[1])))
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(partial_type(a) for a in args)]  # noqa: UP007
    if origin is typing.Annotated:
        return partial_type(args[0])
    return python_type


def _partial_model(model: type[pydantic.BaseModel]) -> Any:
    fields: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        loose = FieldInfo.merge_field_infos(field, default=None)
        loose.metadata = [m for m in field.metadata if not isinstance(m, annotated_types.MinLen)]
        annotation: Any = field.annotation
        fields[name] = (typing.Optional[partial_type(annotation)], loose)  # noqa: UP045
    return pydantic.create_model(
        f"Partial{model.__name__}", __config__=model.model_config, **fields
    )
