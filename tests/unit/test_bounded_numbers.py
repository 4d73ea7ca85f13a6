"""Default bounds on JSON numbers (issue 16): the schema engines get, the schema outputs are
checked against, and lp.Local's token masks under the bounded schema.

The masks are built over the tiny model's 512-token byte-level tokenizer (no weights needed).
"""

from __future__ import annotations

import json
import random
import re

import pydantic
import pytest
import tokenizers
import torch
from support.models import tiny_model_dir

from lmprog.backends.local.masks import ConstraintMasker, TokenVocabulary
from lmprog.constraints import (
    FRACTION_DIGITS,
    FRACTION_STEP,
    NUMBER_LIMIT,
    bounded_numbers,
    make_constraint,
    schema_constraint,
)
from lmprog.errors import ConstraintError
from lmprog.partial import partial_reader

TINY_EOS = 1
DIGITS = re.compile(rb"[0-9]")


def test_numbers_get_a_fraction_step_and_a_schemas_own_multiple_wins() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ratio": {"type": "number"},
            "maybe": {"type": ["number", "null"], "minimum": 0},
            "count": {"type": "integer"},
            "half": {"type": "number", "multipleOf": 0.5},
            "level": {"type": "number", "enum": [1.5, 2.5]},
            "pinned": {"type": "number", "const": 0.125},
            "items": {"type": "array", "items": {"anyOf": [{"type": "number"}]}},
        },
    }
    properties = bounded_numbers(schema)["properties"]
    assert properties["ratio"] == {
        "type": "number",
        "minimum": -NUMBER_LIMIT,
        "maximum": NUMBER_LIMIT,
        "multipleOf": FRACTION_STEP,
    }
    assert properties["maybe"]["multipleOf"] == FRACTION_STEP
    assert "multipleOf" not in properties["count"]  # an integer has no fraction
    assert properties["half"]["multipleOf"] == 0.5
    assert properties["level"] == schema["properties"]["level"]  # type: ignore[index]
    assert properties["pinned"] == schema["properties"]["pinned"]  # type: ignore[index]
    assert properties["items"]["items"]["anyOf"][0]["multipleOf"] == FRACTION_STEP
    assert "multipleOf" not in schema["properties"]["ratio"]  # type: ignore[index]
    # what goes on the wire is exactly 10**-FRACTION_DIGITS, the form llguidance can read
    assert json.dumps(FRACTION_STEP) == f"1e-{FRACTION_DIGITS}"


def test_outputs_are_checked_against_the_users_schema_not_the_bounded_one() -> None:
    """jsonschema's multipleOf on doubles is inexact (2.675 / 1e-10 is not whole), and the
    bounds only stop runaway digits: an engine that ignores them must not fail valid output."""
    user = {"type": "object", "properties": {"x": {"type": "number"}, "n": {"type": "integer"}}}
    constraint = schema_constraint(user)
    assert constraint.schema is not None
    assert constraint.schema["properties"]["x"]["multipleOf"] == FRACTION_STEP
    assert constraint.output_schema == user
    text = json.dumps({"x": 2.675, "n": 2**60})
    assert constraint.parse(text) == {"x": 2.675, "n": 2**60}
    assert partial_reader(constraint).value('{"x": 2.675, "n"') == {"x": 2.675}


def test_a_json_type_keeps_its_closed_schema_for_checks_and_bounds_for_the_engine() -> None:
    class Reading(pydantic.BaseModel):
        value: float

    constraint = make_constraint(type=Reading)
    assert constraint is not None and constraint.schema is not None
    assert constraint.check_schema is not None
    assert constraint.schema["properties"]["value"]["multipleOf"] == FRACTION_STEP
    assert "multipleOf" not in constraint.check_schema["properties"]["value"]
    assert constraint.check_schema["additionalProperties"] is False
    assert constraint.parse('{"value": 2.675}') == Reading(value=2.675)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ConstraintMasker:
    tokenizer = tokenizers.Tokenizer.from_file(str(tiny_model_dir() / "tokenizer.json"))
    root = tmp_path_factory.mktemp("token-index")
    return ConstraintMasker(
        TokenVocabulary.for_tokenizer(tokenizer, [TINY_EOS], 520, cache_root=root)
    )


def _digit_tokens_allowed_after(
    masker: ConstraintMasker, schema: dict[str, object], text: str
) -> bool:
    """Whether lp.Local's mask allows a token starting with a digit after `text`."""
    vocabulary = masker.vocabulary
    constraint = make_constraint(json_schema=schema)
    assert constraint is not None
    state = masker.start(constraint)
    by_bytes = {token: index for index, token in enumerate(vocabulary.tokens) if token}
    for character in text.encode():  # one byte token at a time (the tokenizer has them all)
        state.advance(by_bytes[bytes([character])])
    allowed = torch.zeros(vocabulary.vocab_size, dtype=torch.bool)
    state.fill_mask(allowed)
    return any(
        DIGITS.match(vocabulary.tokens[index] or b"") for index in allowed.nonzero().flatten()
    )


def test_locals_mask_refuses_a_digit_past_the_fraction_bound(tiny: ConstraintMasker) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"x": {"type": "number"}},
        "required": ["x"],
    }
    nine = '{"x":3.' + "1" * (FRACTION_DIGITS - 1)
    assert _digit_tokens_allowed_after(tiny, schema, nine)
    assert not _digit_tokens_allowed_after(tiny, schema, nine + "1")
    # a schema's own step wins: hundredths end after two decimals, a finer step goes further
    assert not _digit_tokens_allowed_after(tiny, {"type": "number", "multipleOf": 0.01}, "3.14")
    assert _digit_tokens_allowed_after(tiny, {"type": "number", "multipleOf": 0.001}, "3.14")


def test_walks_that_favour_digits_still_end_each_fraction_at_the_bound(
    tiny: ConstraintMasker,
) -> None:
    """Random allowed tokens, a digit token 19 times in 20 when one is allowed (a model that
    wants more digits): every fraction stops at FRACTION_DIGITS, and the walks reach it."""
    constraint = make_constraint(json_schema={"type": "array", "items": {"type": "number"}})
    assert constraint is not None
    vocabulary = tiny.vocabulary
    allowed = torch.zeros(vocabulary.vocab_size, dtype=torch.bool)
    fractions: list[str] = []
    for seed in range(10):
        rng, state, data = random.Random(seed), tiny.start(constraint), b""
        while not state.is_finished and len(data) < 400:
            state.fill_mask(allowed)
            tokens = allowed.nonzero().flatten().tolist()
            digits = [t for t in tokens if DIGITS.match(vocabulary.tokens[t] or b"")]
            token = rng.choice(digits if digits and rng.random() < 0.95 else tokens)
            if token == TINY_EOS:
                break
            state.advance(token)
            data += vocabulary.tokens[token] or b""
        fractions += re.findall(r"\.([0-9]+)", data.decode())
    assert fractions and max(len(fraction) for fraction in fractions) == FRACTION_DIGITS


def test_a_schema_given_as_text_is_made_once_and_outputs_checked_as_before() -> None:
    text = json.dumps({"type": "object", "properties": {"x": {"type": "number"}}})
    constraint = schema_constraint(text)
    assert schema_constraint(text) is constraint  # a batch passes the same text every run
    assert constraint.parse('{"x": 1.5}') == {"x": 1.5}
    assert constraint.parse('{"x": 1e999}') == {"x": float("inf")}  # JSON, though no double
    with pytest.raises(ConstraintError, match="violates the JSON schema: 'a' is not of type"):
        constraint.parse('{"x": "a"}')
