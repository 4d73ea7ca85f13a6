"""Every way to constrain a gen, reduced to one `Constraint` value.

`regex=`, `json_schema=`, `type=`, `choices=`, `grammar=` and `dtype=` are validated here, when
`lp.gen(...)` is called, so a bad pattern fails before any request. Parsing generated text into
typed values also happens only here (`Constraint.parse`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
import typing
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import jsonschema
import jsonschema_rs
import pydantic
import regex

from lmprog.errors import ConstraintError

ConstraintKind = Literal["regex", "json_schema", "choices", "grammar"]

VALIDATION_TIMEOUT_S = 1.0
INT_REGEX = r"-?(0|[1-9][0-9]{0,17})"
FLOAT_REGEX = r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?"
BOOL_REGEX = r"(true|false|True|False)"

# SGLang's patterns for `gen(dtype=...)` (`sglang.lang.ir`'s names; lmprog.ir re-exports them).
# The trailing `[ \n]*` of a number gives a model a way to end it (it stops there).
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""  # a double-quoted string of word characters and white space
REGEX_STRING = REGEX_STR  # SGLang's earlier name

# What the engine enforces for `dtype=` (see dtype_constraint): SGLang's pattern, then, after a
# character that ends the value, anything; the gen stops at that character, so the text kept
# always matches SGLang's pattern. A model that wants to write "24 hours" or "2100000," (one
# token: a space or comma glued to a word) may: the stop cuts it to "24". Under SGLang's
# pattern alone such tokens are refused, and a small model goes on "24000000000...".
_INT_ENDS = " \n,;.)]}"
_FLOAT_ENDS = " \n,;)]}"
_DTYPE_WIRE = {
    int: (r"[-+]?[0-9]+(?:[ \n,;.)\]}][\s\S]*)?", tuple(_INT_ENDS)),
    float: (r"[-+]?[0-9]*\.?[0-9]+(?:[ \n,;)\]}][\s\S]*)?", tuple(_FLOAT_ENDS)),
    bool: (REGEX_BOOL, ()),
    # after the opening quote, which the executor writes; it stops the gen at the closing one
    str: (r'[\w\d\s]*(?:"[\s\S]*)?', ()),
}

_DTYPES: dict[str, type] = {"int": int, "float": float, "str": str, "string": str, "bool": bool}


@dataclass(frozen=True, eq=False)
class Constraint:
    """What a gen's output must be, and how to turn the text into a Python value.

    kind: "regex" (pattern), "json_schema" (schema), "choices" (choices) or "grammar"
    (grammar text, `grammar_syntax` "gbnf" or "lark"). `python_type` is the type the value is
    parsed into (None: the text itself). A JSON schema's `schema` is what engines enforce (the
    user's, with numbers bounded: `bounded_numbers`); the output is checked against the
    user's own (`check_schema`), since the bounds are only there to stop runaway digits.
    """

    kind: ConstraintKind
    pattern: str | None = None
    schema: dict[str, Any] | None = None
    choices: tuple[str, ...] = ()
    grammar: str | None = None
    python_type: Any = None
    description: str = ""
    quoted: bool = False  # dtype=str: the executor writes the quotes around what it generates
    check_pattern: str | None = None  # what the output must match, if not `pattern` (dtype=)
    check_schema: dict[str, Any] | None = None  # what the output must meet, if not `schema`
    stops: tuple[str, ...] = ()  # stop strings a gen under this constraint adds (dtype=)
    _adapter: pydantic.TypeAdapter[Any] | None = field(default=None, repr=False)

    @cached_property
    def _compiled(self) -> Any:
        """Compiled with the `regex` package, which can give up after a timeout: a
        pathological pattern such as `(a+)+b` must not hang a worker validating output."""
        assert self.pattern is not None
        return regex.compile(self.pattern)

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema an output is checked against: `check_schema`, else `schema`."""
        return self.check_schema if self.check_schema is not None else self.schema

    @cached_property
    def _fast_validator(self) -> jsonschema_rs.Draft202012Validator:
        """Made once per constraint, and jsonschema-rs: a batch checks every program's output,
        and jsonschema took ~30 us per small object where this takes under 1 us."""
        assert self.output_schema is not None
        return jsonschema_rs.Draft202012Validator(self.output_schema)

    @property
    def grammar_syntax(self) -> Literal["gbnf", "lark"]:
        """GBNF/EBNF grammars write rules as `name ::= ...`; Lark writes `name: ...`."""
        return "gbnf" if self.grammar is not None and "::=" in self.grammar else "lark"

    def parse(self, text: str) -> Any:
        """Check `text` against the constraint; return the typed value or raise ConstraintError."""
        if self.check_pattern is not None:
            if regex.fullmatch(self.check_pattern, text, timeout=VALIDATION_TIMEOUT_S) is None:
                raise ConstraintError(f"output {text!r} does not match {self.description}")
        elif self.kind == "regex" and not self._matches(text):
            raise ConstraintError(f"output {text!r} does not match {self.description}")
        if self.kind == "choices" and text not in self.choices:
            raise ConstraintError(f"output {text!r} is not one of {list(self.choices)}")
        if self.kind == "json_schema":
            return self._parse_json(text)
        if self.quoted:
            return text.strip()[1:-1]
        return _convert(text, self.python_type)

    def _matches(self, text: str) -> bool:
        try:
            return self._compiled.fullmatch(text, timeout=VALIDATION_TIMEOUT_S) is not None
        except TimeoutError as exc:
            raise ConstraintError(
                f"checking the output against {self.description} took over "
                f"{VALIDATION_TIMEOUT_S} s (the pattern backtracks badly): simplify the regex"
            ) from exc

    def _parse_json(self, text: str) -> Any:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConstraintError(f"output is not valid JSON ({exc}): {text[:200]!r}") from exc
        if not self._fast_validator.is_valid(data):
            # jsonschema has the last word and the message: jsonschema-rs reads a float that
            # JSON cannot hold (1e999 parses to inf) as null, and refuses it
            assert self.output_schema is not None
            validator = jsonschema.Draft202012Validator(self.output_schema)
            error = jsonschema.exceptions.best_match(validator.iter_errors(data))
            if error is not None:
                raise ConstraintError(f"output violates the JSON schema: {error.message}")
        if self._adapter is None:
            return data
        try:
            return self._adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            raise ConstraintError(f"output does not validate as {self.description}: {exc}") from exc


def _convert(text: str, python_type: Any) -> Any:
    if python_type is None or python_type is str:
        return text
    if python_type is bool:
        return text.lower() == "true"
    if python_type in (int, float):
        return python_type(text)  # int() and float() ignore the whitespace around a number
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        return next(member for member in python_type if str(member.value) == text)
    return text  # Literal[...] of strings


def make_constraint(
    *,
    regex: str | None = None,
    json_schema: dict[str, Any] | str | None = None,
    type: Any = None,
    choices: typing.Sequence[str] | None = None,
    grammar: str | None = None,
    dtype: Any = None,
) -> Constraint | None:
    """Validate the constraint arguments of `gen` and fold them into one Constraint (or None)."""
    given = [
        name
        for name, value in (
            ("regex", regex),
            ("json_schema", json_schema),
            ("type", type),
            ("choices", choices),
            ("grammar", grammar),
            ("dtype", dtype),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConstraintError(f"give at most one constraint, got {', '.join(given)}")
    if regex is not None:
        return regex_constraint(regex)
    if json_schema is not None:
        return schema_constraint(json_schema)
    if choices is not None:
        return choices_constraint(choices)
    if grammar is not None:
        if not isinstance(grammar, str) or not grammar.strip():
            raise ConstraintError("grammar= must be a non-empty grammar text")
        return Constraint(kind="grammar", grammar=grammar, description="the grammar")
    if dtype is not None:
        return dtype_constraint(dtype)
    if type is not None:
        return type_constraint(type)
    return None


def dtype_constraint(dtype: Any) -> Constraint:
    """SGLang's `dtype=`: int, float, bool and str (or their names). The text kept matches
    SGLang's REGEX_INT, REGEX_FLOAT, REGEX_BOOL or REGEX_STR (a str is a double-quoted
    string), and a number ends at a space or newline as in SGLang; the value is what the text
    denotes (an int, a float, a bool, the string between the quotes).

    What the engine enforces is a little wider (`_DTYPE_WIRE`): after the value, anything, with
    a stop at the character that ended it, so a model can end a value with the token it wants
    ('",', " hours") and the stop keeps only the value. A str's opening quote is written by
    the executor before the request and its closing quote after it (`quoted`)."""
    python_type = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    checks = {int: REGEX_INT, float: REGEX_FLOAT, bool: REGEX_BOOL, str: REGEX_STR}
    if python_type not in checks:
        raise ConstraintError(f"dtype= must be int, float, str or bool, got {dtype!r}")
    pattern, stops = _DTYPE_WIRE[python_type]
    name = python_type.__name__
    return Constraint(
        kind="regex",
        pattern=pattern,
        python_type=python_type,
        quoted=python_type is str,
        check_pattern=checks[python_type],
        stops=stops,
        description=f"regex {checks[python_type]!r} (dtype={name})",
    )


def regex_constraint(pattern: str, python_type: Any = None) -> Constraint:
    if not isinstance(pattern, str):
        raise ConstraintError(f"regex= must be a string, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConstraintError(f"invalid regex {pattern!r}: {exc}") from exc
    return Constraint(
        kind="regex", pattern=pattern, python_type=python_type, description=f"regex {pattern!r}"
    )


def schema_constraint(
    schema: dict[str, Any] | str, adapter: pydantic.TypeAdapter[Any] | None = None
) -> Constraint:
    if isinstance(schema, str) and adapter is None:
        return _text_schema_constraint(schema)
    return _schema_constraint(schema, adapter)


@functools.lru_cache(maxsize=1024)
def _text_schema_constraint(schema: str) -> Constraint:
    """`json_schema=` given as text, made once per distinct text (constraints are immutable):
    a program in a batch passes the same text on every run."""
    return _schema_constraint(schema, None)


def _schema_constraint(
    schema: dict[str, Any] | str, adapter: pydantic.TypeAdapter[Any] | None
) -> Constraint:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ConstraintError(f"json_schema= is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConstraintError(f"json_schema= must be a JSON object, got {schema!r}")
    _check_schema(json.dumps(schema, sort_keys=True, default=str))
    bounded: dict[str, Any] = bounded_numbers(schema)
    title = bounded.get("title", "")
    return Constraint(
        kind="json_schema",
        schema=bounded,
        check_schema=schema,
        _adapter=adapter,
        description=f"JSON schema {title}".strip(),
    )


@functools.lru_cache(maxsize=1024)
def _check_schema(text: str) -> None:
    """Check a schema (as canonical JSON) against the metaschema, once per distinct schema: a
    program in a batch would otherwise check the same schema on every run."""
    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(text))
    except jsonschema.SchemaError as exc:
        raise ConstraintError(f"invalid JSON schema: {exc.message}") from exc


def choices_constraint(choices: typing.Sequence[str], python_type: Any = None) -> Constraint:
    if isinstance(choices, str) or not all(isinstance(c, str) for c in choices):
        raise ConstraintError(f"choices must be a list of strings, got {choices!r}")
    if not choices:
        raise ConstraintError("choices must not be empty")
    if len(set(choices)) != len(choices):
        raise ConstraintError(f"choices must be distinct, got {list(choices)!r}")
    return Constraint(
        kind="choices",
        choices=tuple(choices),
        python_type=python_type,
        description=f"one of {list(choices)}",
    )


def type_constraint(python_type: Any) -> Constraint | None:
    """int/float/bool become regexes; str is free text; Literal/Enum become choices;
    pydantic models and list/dict containers become JSON schemas validated by pydantic."""
    if python_type is str:
        return None
    if python_type is bool:
        return regex_constraint(BOOL_REGEX, bool)
    if python_type is int:
        return regex_constraint(INT_REGEX, int)
    if python_type is float:
        return regex_constraint(FLOAT_REGEX, float)
    if typing.get_origin(python_type) is Literal:
        values = typing.get_args(python_type)
        if not all(isinstance(v, str) for v in values):
            return _json_type(python_type)
        return choices_constraint(list(values), python_type)
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        return choices_constraint([str(m.value) for m in python_type], python_type)
    return _json_type(python_type)


# Unbounded numbers let a small model write digits until max_tokens ("population": 100000...,
# "ratio": 0.3333333...). The integer bound: at most 16 digits, as llama.cpp's JSON-schema
# grammars allow, and the largest integer a double holds exactly (engines compare bounds as
# doubles: 10**16 - 1 rounds up to 10**16, which llguidance then allowed).
NUMBER_LIMIT = 2**53 - 1
# The fraction bound, `multipleOf: 1e-10` (a multiple of 1e-10 has at most 10 decimals): the
# finest decimal step llguidance takes (it scales the double by 10 until it is whole, and
# 1e-11's double never is), so not llama.cpp's 16. xgrammar ignores it (a bounded number gets
# 6 decimals there anyway); llama.cpp ignores it too and keeps its own 16.
FRACTION_DIGITS = 10
FRACTION_STEP = float(f"1e-{FRACTION_DIGITS}")


def bounded_numbers(schema: Any) -> Any:
    """`schema` with every integer and number that has no bound of its own bounded to
    +/-NUMBER_LIMIT (a bound the schema gives wins; its other side is still bounded), and every
    number with no `multipleOf` of its own to FRACTION_DIGITS decimals."""
    if isinstance(schema, list):
        return [bounded_numbers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: bounded_numbers(value) for key, value in schema.items()}
    declared = schema.get("type")  # (a property named "type" holds a schema, not a type)
    kinds = {declared} if isinstance(declared, str) else set()
    if isinstance(declared, list):
        kinds = {kind for kind in declared if isinstance(kind, str)}
    if kinds & {"integer", "number"} and "enum" not in schema and "const" not in schema:
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            bounded["minimum"] = -NUMBER_LIMIT
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            bounded["maximum"] = NUMBER_LIMIT
        if "number" in kinds and "multipleOf" not in schema:
            bounded["multipleOf"] = FRACTION_STEP
    return bounded


def closed_schema(schema: Any) -> Any:
    """Close every object that does not say otherwise (`additionalProperties: false`).

    Pydantic ignores unknown fields, so the closed schema accepts every output the model type
    does; but engines that allow extra keys by default (vLLM's guidance backend) would
    otherwise let the model wander off into keys nobody asked for.
    """
    if isinstance(schema, list):
        return [closed_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: closed_schema(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def _json_type(python_type: Any) -> Constraint:
    """The constraint of a JSON type, made once per type (constraints are immutable)."""
    try:
        return _cached_json_type(python_type)
    except TypeError:  # an unhashable type annotation: build it each time
        return _build_json_type(python_type)


@functools.lru_cache(maxsize=256)
def _cached_json_type(python_type: Any) -> Constraint:
    return _build_json_type(python_type)


def _build_json_type(python_type: Any) -> Constraint:
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(python_type)
        schema = adapter.json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
        raise ConstraintError(
            f"type={python_type!r} is not supported: use a pydantic model, int, float, bool, "
            "str, Literal, Enum, or list/dict of those"
        ) from exc
    constraint = schema_constraint(closed_schema(schema), adapter)
    name = getattr(python_type, "__name__", repr(python_type))
    return dataclasses.replace(constraint, python_type=python_type, description=f"type {name}")
