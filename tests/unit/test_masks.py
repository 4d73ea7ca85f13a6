"""Token masks for in-process constrained decoding (lmprog.backends.local.masks).

Random walks pick allowed tokens (seeded) until the constraint ends; whatever text comes out must
satisfy an independent check (the `regex` module, jsonschema, a Python regex for the grammar).
The tiny model's 512-token byte-level BPE keeps these fast; the Gemma tests use its 262,144-token
SentencePiece vocabulary (byte fallback, control tokens).
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import regex
import tokenizers
import torch
from support.models import tiny_model_dir

from lmprog.backends.local.masks import (
    ConstraintMasker,
    ConstraintState,
    TokenVocabulary,
    explodes_in_outlines,
    outlines_enforces,
)
from lmprog.backends.local.weights import ModelFiles, resolve_model
from lmprog.constraints import FLOAT_REGEX, INT_REGEX, Constraint, make_constraint
from lmprog.errors import ConstraintError

TINY_EOS = 1
TINY_WIDTH = 520  # logits wider than the 512-token tokenizer: ids 512.. must never be allowed
TINY_FORBIDDEN = (0, 2, 3, *range(512, TINY_WIDTH))  # <s>, <|im_start|>, <|im_end|>, padding
EOS_BIAS = 0.25  # chance of taking EOS when allowed, so walks over `[a-z]+` end


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int
    vaccinated: bool
    tags: list[str] = pydantic.Field(max_length=3)
    colour: Colour


def constrain(**arguments: Any) -> Constraint:
    """The Constraint `lp.gen(...)` would build from these arguments."""
    constraint = make_constraint(**arguments)
    assert constraint is not None
    return constraint


@pytest.fixture(scope="module")
def tiny_tokenizer() -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(tiny_model_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny(
    tiny_tokenizer: tokenizers.Tokenizer, tmp_path_factory: pytest.TempPathFactory
) -> ConstraintMasker:
    root = tmp_path_factory.mktemp("token-index")
    vocabulary = TokenVocabulary.for_tokenizer(
        tiny_tokenizer, [TINY_EOS], TINY_WIDTH, cache_root=root
    )
    return ConstraintMasker(vocabulary)


def walk(
    masker: ConstraintMasker,
    constraint: Constraint,
    seed: int,
    max_steps: int = 600,
    forbidden: Sequence[int] = TINY_FORBIDDEN,
) -> str | None:
    """Decode random allowed tokens until EOS or `is_finished`; the text (None if capped).
    Checks on every step that forbidden ids are masked and EOS is allowed iff `can_end`."""
    vocabulary = masker.vocabulary
    eos = list(vocabulary.eos_token_ids)
    state = masker.start(constraint)
    rng = random.Random(seed)
    allowed = torch.zeros(vocabulary.vocab_size, dtype=torch.bool)
    data = b""
    for _ in range(max_steps):
        state.fill_mask(allowed)
        assert not allowed[list(forbidden)].any()
        assert bool(allowed[eos].all()) == state.can_end
        if state.can_end and rng.random() < EOS_BIAS:
            token = eos[0]
        else:
            token = rng.choice(allowed.nonzero().flatten().tolist())
        state.advance(token)
        if token in eos:
            return data.decode()
        data += vocabulary.tokens[token] or b""
        if state.is_finished:
            assert state.can_end
            return data.decode()
    return None


def finished_walks(masker: ConstraintMasker, constraint: Constraint, count: int = 20) -> list[str]:
    texts = [walk(masker, constraint, seed) for seed in range(count)]
    finished = [text for text in texts if text is not None]
    assert len(finished) >= count // 2, "most walks should end within the step cap"
    return finished


@pytest.mark.parametrize(
    "pattern",
    [
        r"[0-9]+",
        r"-?(0|[1-9][0-9]{0,3})",
        r"[a-z]+@[a-z]+\.com",
        r"[a-zé]+ ?[αβγ]{1,3}",  # multi-byte characters from single-byte tokens
        r"(😀|🎉)+!",
        r"(cats|cat|dog|bird)s? (and|or) (fish|ferret)",
        r"[^,]{1,8}(,[^,]{1,8}){0,3}",  # may match the START marker: compiled without it
        r"[1-9][0-9]{0,30}",  # would explode without the START marker
    ],
)
def test_regex_walks_produce_full_matches(tiny: ConstraintMasker, pattern: str) -> None:
    for text in finished_walks(tiny, constrain(regex=pattern)):
        assert regex.fullmatch(pattern, text), (pattern, text)


def test_json_schema_walks_validate(tiny: ConstraintMasker) -> None:
    constraint = constrain(type=Pet)
    assert constraint.schema is not None
    texts = finished_walks(tiny, constraint)
    for text in texts:
        jsonschema.validate(json.loads(text), constraint.schema)
        assert isinstance(constraint.parse(text), Pet)
    assert {json.loads(text)["colour"] for text in texts} == {"red", "green"}


def test_schema_keywords_outlines_ignores_are_enforced_by_llguidance(
    tiny: ConstraintMasker,
) -> None:
    """outlines-core drops numeric bounds from its regex; such schemas go to llguidance."""
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 3, "maximum": 42},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        },
        "required": ["n", "tags"],
        "additionalProperties": False,
    }
    assert not outlines_enforces(schema)
    assert outlines_enforces({"type": "object", "properties": {"n": {"type": "integer"}}})
    texts = finished_walks(tiny, constrain(json_schema=schema))
    for text in texts:
        jsonschema.validate(json.loads(text), schema)
    assert len({json.loads(text)["n"] for text in texts}) > 1


@pytest.mark.timeout(60)
def test_long_bounded_repeats_of_negated_classes_compile_at_once(tiny: ConstraintMasker) -> None:
    """outlines-core needed 13 GB and 10+ minutes for this; llguidance computes it lazily."""
    pattern = r"[^\n.!?]{1,100}[.!?]"
    assert explodes_in_outlines(pattern) and not explodes_in_outlines(r"[a-z]{1,100}")
    for text in finished_walks(tiny, constrain(regex=pattern)):
        assert regex.fullmatch(pattern, text), text
    schema = {"type": "string", "maxLength": 60}
    for text in finished_walks(tiny, constrain(json_schema=schema)):
        assert len(json.loads(text)) <= 60


def test_json_whitespace_is_bounded(tiny: ConstraintMasker) -> None:
    """At most one space per whitespace slot (so at most two in a row), no newlines."""
    constraint = constrain(json_schema={"type": "array", "items": {"type": "integer"}})
    for text in finished_walks(tiny, constraint):
        assert isinstance(json.loads(text), list)
        assert not regex.search(r"\s{3}|[\n\t]", text), text


def test_choices_with_shared_prefixes_are_all_reachable(tiny: ConstraintMasker) -> None:
    choices = [" posit", " positive", " negative"]
    texts = finished_walks(tiny, constrain(choices=choices), count=40)
    assert set(texts) == set(choices)


def test_choices_escape_regex_syntax(tiny: ConstraintMasker) -> None:
    choices = ["a.b", "(x|y)*", "[1]", "\\d"]
    texts = finished_walks(tiny, constrain(choices=choices), count=30)
    assert set(texts) == set(choices)


def test_lark_grammar_walks(tiny: ConstraintMasker) -> None:
    grammar = """
start: greeting " " name ("!" | ".")
greeting: "hello" | "hi"
name: /[a-z]{1,8}/
"""
    constraint = constrain(grammar=grammar)
    assert constraint.grammar_syntax == "lark"
    for text in finished_walks(tiny, constraint):
        assert regex.fullmatch(r"(hello|hi) [a-z]{1,8}[!.]", text), text


def test_gbnf_grammar_walks(tiny: ConstraintMasker) -> None:
    grammar = 'root ::= "(" num ("+" num)* ")"\nnum ::= [0-9] [0-9]? [0-9]?\n'
    constraint = constrain(grammar=grammar)
    assert constraint.grammar_syntax == "gbnf"
    for text in finished_walks(tiny, constraint):
        assert regex.fullmatch(r"\([0-9]{1,3}(\+[0-9]{1,3})*\)", text), text


def test_only_plain_tokens_are_ever_allowed(tiny: ConstraintMasker) -> None:
    """Anything-goes text allows every token that starts valid UTF-8, but still excludes
    control tokens and ids past the tokenizer."""
    allowed = torch.zeros(TINY_WIDTH, dtype=torch.bool)
    tiny.start(constrain(regex=r"(?s).*")).fill_mask(allowed)  # outlines-core, not llguidance
    tokens = tiny.vocabulary.tokens
    expected = [i == TINY_EOS or starts_utf8(tokens[i]) for i in range(TINY_WIDTH)]
    expected[tokens.index(b"\xf4")] = False  # U+100000.. could spell the end marker
    assert allowed.tolist() == expected


def starts_utf8(data: bytes | None) -> bool:
    """Valid UTF-8, or valid up to an incomplete last character."""
    if data is None:
        return False
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"
    return True


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("a|ab", "ab"),  # a later alternative extending a complete match
        ("abc(def)?", "abcdef"),
        (FLOAT_REGEX, "12.5e-3"),  # `.` and `e` one byte past a complete number
        ("[a-zé]+", "caféé"),  # the bytes of é one by one after a complete match
        ("(yes|no)+?", "yesno"),  # lazy
        ("^(yes|no)$", "no"),  # outer anchors
        (r"\$[0-9]+\$", "$12$"),  # escaped dollars stay literal
    ],
)
def test_regex_text_accepted_byte_by_byte(tiny: ConstraintMasker, pattern: str, text: str) -> None:
    """Single-byte tokens reach every full match (outlines-core alone loses these)."""
    state = tiny.start(constrain(regex=pattern))
    allowed = torch.zeros(TINY_WIDTH, dtype=torch.bool)
    for byte in text.encode():
        token = tiny.vocabulary.tokens.index(bytes([byte]))
        state.fill_mask(allowed)
        assert allowed[token], (pattern, text, byte)
        state.advance(token)
    assert state.can_end


def test_token_bytes_match_the_tokenizers_decoding(
    tiny: ConstraintMasker, tiny_tokenizer: tokenizers.Tokenizer
) -> None:
    tokens = tiny.vocabulary.tokens
    assert all(tokens[i] is None for i in (*TINY_FORBIDDEN, TINY_EOS))
    assert_decodes_like(tokens, tiny_tokenizer, range(4, 512))


def assert_decodes_like(
    tokens: list[bytes | None], tokenizer: tokenizers.Tokenizer, ids: Iterable[int]
) -> None:
    """Each token that is whole UTF-8 decodes to the text the tokenizer gives for it alone."""
    checked = 0
    for token_id in ids:
        data = tokens[token_id]
        assert data is not None, token_id
        try:
            text = data.decode()
        except UnicodeDecodeError:
            continue
        assert text == tokenizer.decode([token_id], skip_special_tokens=False), token_id
        checked += 1
    assert checked > 0


def test_advance_rejects_tokens_outside_the_mask(tiny: ConstraintMasker) -> None:
    seven = tiny.vocabulary.tokens.index(b"7")
    letter = tiny.vocabulary.tokens.index(b"x")
    state = tiny.start(constrain(regex=r"[0-9]{2}"))
    with pytest.raises(ConstraintError, match="not allowed"):
        state.advance(letter)
    with pytest.raises(ConstraintError, match="EOS"):
        state.advance(TINY_EOS)
    state.advance(seven)
    assert not state.can_end and not state.is_finished
    state.advance(seven)
    assert state.can_end and state.is_finished
    state.advance(TINY_EOS)
    allowed = torch.zeros(TINY_WIDTH, dtype=torch.bool)
    state.fill_mask(allowed)
    assert allowed.nonzero().flatten().tolist() == [TINY_EOS]


def test_grammar_state_rejects_tokens_and_stays_usable(tiny: ConstraintMasker) -> None:
    tokens = tiny.vocabulary.tokens
    state = tiny.start(constrain(grammar='root ::= "a" "b"'))
    with pytest.raises(ConstraintError, match="not allowed"):
        state.advance(tokens.index(b"b"))
    state.advance(tokens.index(b"a"))
    assert not state.can_end
    state.advance(tokens.index(b"b"))
    assert state.can_end and state.is_finished


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (Constraint(kind="regex", pattern=r"(?<=a)b"), "Rust regex syntax"),
        (Constraint(kind="regex", pattern=r"ab\Z"), "Rust regex syntax"),
        (Constraint(kind="regex", pattern=r"a$|b"), r"\^/\$ only at the very start/end"),
        (Constraint(kind="json_schema", schema={"not": {"type": "string"}}), "JSON schema"),
        (
            Constraint(kind="json_schema", schema={"type": "array", "uniqueItems": True}),
            "Unimplemented keys.*uniqueItems",
        ),
        (Constraint(kind="grammar", grammar="start: greeting"), 'unknown name: "greeting"'),
        (Constraint(kind="grammar", grammar='start: "a" /[0-9/'), "invalid lark grammar"),
        (Constraint(kind="grammar", grammar="root ::= [a-"), "invalid GBNF grammar"),
    ],
)
def test_uncompilable_constraints_raise_clear_errors(
    tiny: ConstraintMasker, constraint: Constraint, message: str
) -> None:
    with pytest.raises(ConstraintError, match=message):
        tiny.start(constraint)


def test_fresh_load_from_disk_gives_identical_masks(
    tiny_tokenizer: tokenizers.Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constraint = constrain(type=Pet)
    first = ConstraintMasker(
        TokenVocabulary.for_tokenizer(tiny_tokenizer, [TINY_EOS], TINY_WIDTH, cache_root=tmp_path)
    )
    tokens, masks = record_walk(first.start(constraint), first.vocabulary.vocab_size)

    def no_compiling(self: TokenVocabulary) -> None:
        pytest.fail("the index was compiled again instead of read from disk")

    monkeypatch.setattr(TokenVocabulary, "outlines", property(no_compiling))
    again = TokenVocabulary.for_tokenizer(
        tiny_tokenizer, [TINY_EOS], TINY_WIDTH, cache_root=tmp_path
    )
    assert again.tokens == first.vocabulary.tokens
    state = ConstraintMasker(again).start(constraint)
    allowed = torch.zeros(TINY_WIDTH, dtype=torch.bool)
    for token, mask in zip(tokens, masks, strict=True):
        state.fill_mask(allowed)
        assert torch.equal(allowed, mask)
        state.advance(token)


def record_walk(state: ConstraintState, width: int) -> tuple[list[int], list[torch.Tensor]]:
    """The tokens of one seeded walk and the mask before each."""
    rng = random.Random(0)
    tokens: list[int] = []
    masks: list[torch.Tensor] = []
    while not state.is_finished and len(tokens) < 200:
        allowed = torch.zeros(width, dtype=torch.bool)
        state.fill_mask(allowed)
        tokens.append(rng.choice(allowed.nonzero().flatten().tolist()))
        masks.append(allowed)
        state.advance(tokens[-1])
    return tokens, masks


def test_corrupt_cache_files_are_rebuilt(
    tiny_tokenizer: tokenizers.Tokenizer, tmp_path: Path
) -> None:
    vocabulary = TokenVocabulary.for_tokenizer(
        tiny_tokenizer, [TINY_EOS], TINY_WIDTH, cache_root=tmp_path
    )
    ConstraintMasker(vocabulary).start(constrain(regex="[0-9]+"))
    for path in vocabulary.cache_path.iterdir():
        path.write_bytes(b"not a pickle")
    again = TokenVocabulary.for_tokenizer(
        tiny_tokenizer, [TINY_EOS], TINY_WIDTH, cache_root=tmp_path
    )
    assert again.tokens == vocabulary.tokens
    state = ConstraintMasker(again).start(constrain(regex="[0-9]+"))
    assert not state.can_end


# --- Gemma 3 (262,144 tokens, SentencePiece with byte fallback) ---------------------------------

GEMMA_WIDTH = 262_144
GEMMA_CONTROL = (0, 2, 3, 105)  # <pad>, <bos>, <unk>, <start_of_turn>


@pytest.fixture(scope="module")
def gemma_files() -> ModelFiles:
    return resolve_model(None)


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_files: ModelFiles) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(gemma_files.path / "tokenizer.json"))


@pytest.fixture(scope="module")
def gemma(
    gemma_files: ModelFiles,
    gemma_tokenizer: tokenizers.Tokenizer,
    tmp_path_factory: pytest.TempPathFactory,
) -> ConstraintMasker:
    root = tmp_path_factory.mktemp("gemma-token-index")
    vocabulary = TokenVocabulary.for_tokenizer(
        gemma_tokenizer, gemma_files.eos_token_ids, GEMMA_WIDTH, cache_root=root
    )
    return ConstraintMasker(vocabulary)


@pytest.mark.gemma
def test_gemma_token_bytes(gemma: ConstraintMasker, gemma_tokenizer: tokenizers.Tokenizer) -> None:
    vocabulary = gemma.vocabulary
    tokens = vocabulary.tokens
    assert vocabulary.eos_token_ids == (1, 106)  # <eos>, <end_of_turn>
    assert all(tokens[i] is None for i in (*GEMMA_CONTROL, *vocabulary.eos_token_ids))
    ids = gemma_tokenizer.get_vocab()
    assert tokens[ids["<0xF0>"]] == b"\xf0"
    assert tokens[ids["▁the"]] == b" the"
    plain = [i for i in range(0, GEMMA_WIDTH, 97) if tokens[i] is not None]
    assert_decodes_like(tokens, gemma_tokenizer, plain)


@pytest.mark.gemma
@pytest.mark.parametrize("pattern", [INT_REGEX, r"(😀|🎉)+!", r"[a-zé ]{1,12}", r".{0,12}"])
def test_gemma_regex_walks(gemma: ConstraintMasker, pattern: str) -> None:
    for seed in range(5):
        text = walk(gemma, constrain(regex=pattern), seed, forbidden=GEMMA_CONTROL)
        assert text is not None and regex.fullmatch(pattern, text), (pattern, text)


@pytest.mark.gemma
def test_gemma_float_gets_decimals_from_single_tokens(gemma: ConstraintMasker) -> None:
    """Gemma spells numbers digit by digit, so `.` and `e` arrive as tokens of their own."""
    state = gemma.start(constrain(regex=FLOAT_REGEX))
    for piece in ["1", "2", ".", "5", "e", "-", "3"]:
        state.advance(gemma.vocabulary.tokens.index(piece.encode()))
    assert state.can_end


@pytest.mark.gemma
def test_gemma_json_schema_walks_and_reloads(
    gemma: ConstraintMasker, gemma_tokenizer: tokenizers.Tokenizer
) -> None:
    constraint = constrain(type=Pet)
    assert constraint.schema is not None
    for seed in range(3):
        text = walk(gemma, constraint, seed, forbidden=GEMMA_CONTROL)
        if text is not None:
            jsonschema.validate(json.loads(text), constraint.schema)
    tokens, masks = record_walk(gemma.start(constraint), GEMMA_WIDTH)
    vocabulary = gemma.vocabulary
    again = TokenVocabulary.for_tokenizer(
        gemma_tokenizer,
        vocabulary.eos_token_ids,
        GEMMA_WIDTH,
        cache_root=vocabulary.cache_path.parent,
    )
    state = ConstraintMasker(again).start(constraint)
    allowed = torch.zeros(GEMMA_WIDTH, dtype=torch.bool)
    for token, mask in zip(tokens, masks, strict=True):
        state.fill_mask(allowed)
        assert torch.equal(allowed, mask)
        state.advance(token)


@pytest.mark.gemma
def test_gemma_grammar_walks(gemma: ConstraintMasker) -> None:
    grammar = 'root ::= "The answer is " [0-9]+ "."'
    for seed in range(3):
        text = walk(gemma, constrain(grammar=grammar), seed, forbidden=GEMMA_CONTROL)
        assert text is not None and regex.fullmatch(r"The answer is [0-9]+\.", text), text
