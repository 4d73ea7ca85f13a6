"""regex/literal/choices -> GBNF, checked by a small GBNF recognizer written here.

No GBNF engine runs in unit tests, so `gbnf_to_regex` below parses the GBNF subset lmprog emits
(as strictly as llama.cpp's parser: the same escapes, rule names and repetition limits) and turns
the grammar, which has no recursion, back into a Python regex. Hypothesis then checks that the
grammar accepts what the original regex accepts and nothing else.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmprog.errors import ConstraintError
from lmprog.gbnf import choices_to_gbnf, literal_to_gbnf, regex_to_gbnf

# --- a test-only GBNF recognizer -----------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>[ \t]+) | (?P<string>"(?:\\.|[^"\\])*") | (?P<cls>\[(?:\\.|[^\]\\])*\])
      | (?P<define>::=) | (?P<name>[a-zA-Z0-9-]+) | (?P<op>[()|*+?]) | (?P<rep>\{\d+(?:,\d*)?\})""",
    re.VERBOSE,
)
_SIMPLE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


class GbnfError(Exception):
    """The grammar text is not GBNF that llama.cpp would load."""


def _decode_char(text: str, i: int) -> tuple[int, int]:
    """One (possibly escaped) code point at text[i]; the escapes every llama.cpp accepts."""
    if text[i] != "\\":
        return ord(text[i]), i + 1
    kind = text[i + 1]
    if kind in _SIMPLE_ESCAPES:
        return ord(_SIMPLE_ESCAPES[kind]), i + 2
    if kind in _HEX_DIGITS:
        digits = text[i + 2 : i + 2 + _HEX_DIGITS[kind]]
        if len(digits) != _HEX_DIGITS[kind] or not all(c in string.hexdigits for c in digits):
            raise GbnfError(f"bad hex escape at {text[i:]!r}")
        return int(digits, 16), i + 2 + len(digits)
    raise GbnfError(f"unknown escape at {text[i:]!r}")


def _class_ranges(token: str) -> tuple[bool, list[tuple[int, int]]]:
    """Whether a `[...]` token is negated, and its code point ranges."""
    body, negated = token[1:-1], token.startswith("[^")
    i, ranges = (1 if negated else 0), []
    while i < len(body):
        lo, i = _decode_char(body, i)
        hi = lo
        if body[i : i + 1] == "-" and i + 1 < len(body):
            hi, i = _decode_char(body, i + 1)
        if hi < lo:
            raise GbnfError(f"reversed range in {token!r}")
        ranges.append((lo, hi))
    if not ranges:
        raise GbnfError(f"empty class {token!r}")
    return negated, ranges


def _class_to_regex(token: str) -> str:
    negated, ranges = _class_ranges(token)
    items = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return "[" + ("^" if negated else "") + items + "]"


def _string_to_regex(token: str) -> str:
    body, i, chars = token[1:-1], 0, []
    while i < len(body):
        cp, i = _decode_char(body, i)
        chars.append(re.escape(chr(cp)))
    return "".join(chars)


class _Grammar:
    def __init__(self, text: str) -> None:
        self.rules: dict[str, list[tuple[str, str]]] = {}
        for line in text.splitlines():
            tokens = self._tokenize(line)
            if not tokens:
                continue
            if len(tokens) < 2 or tokens[0][0] != "name" or tokens[1][0] != "define":
                raise GbnfError(f"expected `name ::= ...` in {line!r}")
            if tokens[0][1] in self.rules:
                raise GbnfError(f"rule {tokens[0][1]} defined twice")
            self.rules[tokens[0][1]] = tokens[2:]
        self.expanding: set[str] = set()

    @staticmethod
    def _tokenize(line: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(line) and line[pos] != "#":
            match = _TOKEN.match(line, pos)
            if match is None:
                raise GbnfError(f"cannot tokenize {line[pos:]!r}")
            assert match.lastgroup is not None
            if match.lastgroup != "space":
                tokens.append((match.lastgroup, match.group()))
            pos = match.end()
        return tokens

    def rule(self, name: str) -> str:
        if name not in self.rules:
            raise GbnfError(f"undefined rule {name}")
        if name in self.expanding:
            raise GbnfError(f"recursive rule {name}")
        self.expanding.add(name)
        tokens = list(self.rules[name])
        regex = self.alternates(tokens)
        if tokens:
            raise GbnfError(f"unexpected {tokens[0][1]!r} in rule {name}")
        self.expanding.discard(name)
        return regex

    def alternates(self, tokens: list[tuple[str, str]]) -> str:
        alts = [self.sequence(tokens)]
        while tokens and tokens[0] == ("op", "|"):
            tokens.pop(0)
            alts.append(self.sequence(tokens))
        return "|".join(alts)

    def sequence(self, tokens: list[tuple[str, str]]) -> str:
        out = []
        while tokens and tokens[0][1] not in ("|", ")"):
            kind, text = tokens.pop(0)
            if kind == "string":
                atom = _string_to_regex(text)
            elif kind == "cls":
                atom = _class_to_regex(text)
            elif kind == "name":
                atom = self.rule(text)
            elif text == "(":
                atom = self.alternates(tokens)
                if not tokens or tokens.pop(0) != ("op", ")"):
                    raise GbnfError("expected )")
            else:
                raise GbnfError(f"unexpected {text!r}")
            while tokens and (tokens[0][0] == "rep" or tokens[0][1] in "*+?"):
                atom = self.repeat(atom, tokens.pop(0)[1])
            out.append(f"(?:{atom})")
        return "".join(out)

    @staticmethod
    def repeat(atom: str, op: str) -> str:
        bounds = [int(n) for n in re.findall(r"\d+", op)]
        if any(n >= 2000 for n in bounds):  # llama.cpp's MAX_REPETITION_THRESHOLD
            raise GbnfError(f"llama.cpp refuses repetition {op}")
        unbounded = op in "*+" or op.endswith(",}")
        if unbounded and re.fullmatch(atom, ""):
            raise GbnfError(f"unbounded repeat of a nullable item ({atom}{op}): left recursion")
        return f"(?:{atom}){op}"


@functools.cache
def gbnf_to_regex(grammar: str) -> re.Pattern[str]:
    """A Python regex equivalent to `root` of a (non-recursive) GBNF grammar."""
    return re.compile(_Grammar(grammar).rule("root"))


def accepts(grammar: str, text: str) -> bool:
    return gbnf_to_regex(grammar).fullmatch(text) is not None


def test_recognizer_understands_gbnf() -> None:
    grammar = (
        "# comment\n"
        'root ::= ("a" | [^a-c\\x41\\]]) item{2,3} "\\u00e9\\"" ws # trailing comment\n'
        'item ::= "xy"+ | [0-9]\n'
        "ws ::= [ \\t\\n]*\n"
    )
    assert accepts(grammar, 'a12é"')
    assert accepts(grammar, 'dxyxyxy5é" \n')
    assert not accepts(grammar, 'A12é"')
    assert not accepts(grammar, 'b12é"')
    assert not accepts(grammar, 'a1xé"')
    for bad in ('root ::= "\\-"', "root ::= x", "root ::= []", "root ::= [a]{2000}", "r ::= [a]"):
        with pytest.raises(GbnfError):
            gbnf_to_regex(bad)


# --- regex_to_gbnf --------------------------------------------------------------------------

# The grammar's language equals the regex's on all text without NUL (which llama.cpp cannot
# generate) or surrogates (which are not UTF-8).
EXACT = [
    r"(yes|no)",
    r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
    r"[A-Z][a-z]{2,5}",
    r".{0,20}",
    r"(?s).{1,5}",
    r"[à-ü]+",
    r'say "hi" \\ to\tC:\\dir',
    r"((ab|cd)+x|y(z|w)?)*e",
    r"a{3}",
    r"a{2,}",
    r"(ab){2,4}c{0}",
    r"(?i)hello",
    r"(?i)[a-cx]+z(?-i:Q)",
    r'[^"\n]*',
    r"^abc$",
    r"\A(foo|bar|)\Z",
    r"[\]\[\\^-]+",
    r"\S+ \S+",
    r"[^\d\s]x",
    r"(?a)\w+\W\d\D\s\S",
    "\t\n\r\x01\x7f\u2028\U0001f600+",
    r"(a|b)*?c",
    r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?",
]
# Python's \d, \w, \s and (?i) are Unicode; the grammar narrows them to ASCII, so it agrees with
# the regex on ASCII text (but for \x1c-\x1f, which Python's \s matches) and accepts a subset of
# it on other text.
NARROWED = [
    r"-?\d+",
    r"-?\d+(\.\d+)?([eE][-+]?\d+)?",
    r"\d{4}-\d{2}-\d{2}",
    r"\w+@\w+\.com",
    r"\(\d+\)",
    r"[^\W\d]+",
    r"\D{2}\s",
    r"\W+",
    r"(?i)kiss",
]
ASCII = st.characters(codec="ascii", exclude_characters="\x00\x1c\x1d\x1e\x1f")
ANY_CHAR = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # not generable

NEEDS_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="syntax new in Python 3.11")
_SPECIALS = '\n\t "\\aZ0_-.é\u2028'
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _nearby(draw: st.DrawFn, pattern: str, ascii_only: bool) -> str:
    """Strings that match `pattern`, near misses of them, and noise over its characters."""
    alphabet = ASCII if ascii_only else ANY_CHAR
    specials = sorted(c for c in set(pattern + _SPECIALS) if c.isascii() or not ascii_only)
    chars = st.one_of(st.sampled_from(specials), alphabet)
    sample = draw(st.from_regex(pattern, fullmatch=True, alphabet=alphabet))
    i, c = draw(st.integers(0, len(sample))), draw(chars)
    return draw(
        st.sampled_from([sample, sample[:i] + c + sample[i:], sample[:i] + sample[i + 1 :]])
        | st.text(chars, max_size=12)
    )


@pytest.mark.parametrize("pattern", EXACT + NARROWED)
@FAST
@given(data=st.data())
def test_matches_of_the_regex_are_accepted(pattern: str, data: st.DataObject) -> None:
    alphabet = ASCII if pattern in NARROWED else ANY_CHAR
    text = data.draw(st.from_regex(pattern, fullmatch=True, alphabet=alphabet))
    assert accepts(regex_to_gbnf(pattern), text)


@pytest.mark.parametrize("pattern", EXACT)
@FAST
@given(data=st.data())
def test_exact_patterns_agree_with_re(pattern: str, data: st.DataObject) -> None:
    text = data.draw(_nearby(pattern, ascii_only=False))
    assert accepts(regex_to_gbnf(pattern), text) == bool(re.fullmatch(pattern, text))


@pytest.mark.parametrize("pattern", NARROWED)
@FAST
@given(data=st.data())
def test_narrowed_patterns_agree_on_ascii_and_never_accept_more(
    pattern: str, data: st.DataObject
) -> None:
    ascii_text = data.draw(_nearby(pattern, ascii_only=True))
    assert accepts(regex_to_gbnf(pattern), ascii_text) == bool(re.fullmatch(pattern, ascii_text))
    text = data.draw(_nearby(pattern, ascii_only=False))
    if accepts(regex_to_gbnf(pattern), text):
        assert re.fullmatch(pattern, text)


def test_grammars_are_readable() -> None:
    assert regex_to_gbnf(r"-?\d+").splitlines()[1:] == ['root ::= "-"? [0-9]+']
    assert regex_to_gbnf(r"(yes|no)").splitlines()[1:] == ['root ::= "yes" | "no"']
    assert regex_to_gbnf(r"\d{4}-\d{2}").splitlines()[1:] == ['root ::= [0-9]{4} "-" [0-9]{2}']
    assert regex_to_gbnf(r"(ab|cd)+x").splitlines()[1:] == [
        'root ::= g1+ "x"',
        'g1 ::= "ab" | "cd"',
    ]
    assert regex_to_gbnf(r'[^"\\]-').splitlines()[1:] == [
        'root ::= [\\x01-!#-\\x5B\\x5D-\\uD7FF\\uE000-\\U0010FFFF] "-"'
    ]
    assert regex_to_gbnf(r"[\]\-^]").splitlines()[1:] == ["root ::= [\\x2D\\x5D-\\x5E]"]
    assert regex_to_gbnf("").splitlines()[1:] == ['root ::= ""']
    assert regex_to_gbnf(".{0,20}").splitlines()[1:] == [
        "root ::= [\\x01-\\t\\x0B-\\uD7FF\\uE000-\\U0010FFFF]{0,20}"
    ]
    assert regex_to_gbnf("(?s).").splitlines()[1:] == [
        "root ::= [\\x01-\\uD7FF\\uE000-\\U0010FFFF]"
    ]
    assert regex_to_gbnf("(?ai)éa").splitlines()[1:] == ['root ::= "é" [Aa]']  # ASCII-only folds
    assert regex_to_gbnf("(?i)ok").splitlines()[0] == "# lmprog: re.fullmatch('(?i)ok')"


@pytest.mark.parametrize("pattern", EXACT + NARROWED)
def test_grammars_use_conservative_gbnf(pattern: str) -> None:
    """No groups or negated classes; classes within U+0001..U+10FFFF without surrogates;
    repeats only on a class, one character or a rule name."""
    lines = regex_to_gbnf(pattern).splitlines()
    assert lines[0].startswith("# ")
    assert lines[1].startswith("root ::= ")
    for line in lines[1:]:
        tokens = _Grammar._tokenize(line)
        assert re.fullmatch(r"root|g[1-9][0-9]*", tokens[0][1])
        assert ("op", "(") not in tokens
        for kind, text in tokens:
            if kind == "cls":
                negated, ranges = _class_ranges(text)
                assert not negated, line
                assert all(lo > 0 and hi <= 0x10FFFF for lo, hi in ranges), line
                assert not any(lo <= 0xDFFF and hi >= 0xD800 for lo, hi in ranges), line
        for (kind, text), (next_kind, next_text) in itertools.pairwise(tokens):
            if next_kind == "rep" or next_text in ("*", "+", "?"):
                assert kind in ("cls", "name") or len(_string_to_regex(text)) <= 2, line


@NEEDS_311
def test_possessive_repeat_of_one_char_at_the_end_is_greedy() -> None:
    assert regex_to_gbnf(r"a\d++").splitlines()[1:] == ['root ::= "a" [0-9]+']


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"a(?=b)", "lookahead"),
        (r"(?!a)b", "negative lookahead"),
        (r"(?<=a)b", "lookbehind"),
        (r"(?<!a)b", "negative lookbehind"),
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"\bword\b", "word boundary"),
        (r"a\Bb", "word boundary"),
        (r"a^b", "anchor"),
        (r"a$b", "anchor"),
        (r"(?m)a$\nb", "anchor"),
        (r"(^a)*", "anchor"),
        pytest.param(r"(?>ab|a)c", "atomic group", marks=NEEDS_311),
        pytest.param(r"a*+a", "possessive", marks=NEEDS_311),
        (r"a{2000}", "bound above 1999"),
        (r"a{0,5000}", "bound above 1999"),
        (r"(a?)*", "empty string"),
        (r"(a|b?)+", "empty string"),
        (r"(?i)[^a]", "IGNORECASE"),
        (r"(?i)[^x-z]", "IGNORECASE"),
        (r"[^\x01-\U0010ffff]", "without characters llama.cpp can generate"),
        ("a\x00b", "without characters llama.cpp can generate"),
    ],
)
def test_unsupported_constructs_raise_helpful_errors(pattern: str, construct: str) -> None:
    with pytest.raises(ConstraintError) as info:
        regex_to_gbnf(pattern)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert construct in message
    assert repr(pattern) in message
    assert "not supported;" in message  # followed by what to do instead


def test_invalid_regex_is_a_constraint_error_with_the_position() -> None:
    with pytest.raises(ConstraintError, match=r"invalid regex 'ab\(c' at position 2"):
        regex_to_gbnf("ab(c")


@pytest.mark.parametrize("pattern", [r".{0,1000}", r"(ab|c){0,1000}", r"(x{1,1999}y){2,1999}"])
def test_large_bounds_stay_small_and_fast(pattern: str) -> None:
    regex_to_gbnf.cache_clear()
    start = time.perf_counter()
    grammar = regex_to_gbnf(pattern)
    assert time.perf_counter() - start < 0.1
    assert len(grammar) < 200
    gbnf_to_regex(grammar)  # loads, within llama.cpp's repetition limits


def test_large_bound_counts_are_exact() -> None:
    grammar = regex_to_gbnf(r"(ab|c){0,1000}")
    assert accepts(grammar, "ab" * 1000)
    assert accepts(grammar, "c" * 999 + "ab")
    assert not accepts(grammar, "ab" * 1001)


def test_results_are_cached() -> None:
    regex_to_gbnf.cache_clear()
    first = regex_to_gbnf(r"[a-z]+\d")
    assert regex_to_gbnf(r"[a-z]+\d") is first
    assert regex_to_gbnf.cache_info().hits == 1


# --- literal_to_gbnf / choices_to_gbnf ------------------------------------------------------

TRICKY = [
    "",
    'say "hi"',
    "back\\slash\\",
    "two\nlines\r\n",
    "tab\there",
    "é ü 日本 😀",
    "\x01\x1f\x7f",
    "[^-]#",
    "\u2028\ufeff",
    "\\x41\\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_literal_matches_exactly_the_text(text: str) -> None:
    grammar = literal_to_gbnf(text)
    assert accepts(grammar, text)
    assert not accepts(grammar, text + "x")
    assert not accepts(grammar, text[:-1]) or text == ""


def test_literal_escapes() -> None:
    assert literal_to_gbnf('a"b\\c\nd\té\x01') == 'root ::= "a\\"b\\\\c\\nd\\té\\x01"\n'


@given(st.text(ANY_CHAR), st.text(ANY_CHAR))
def test_literal_of_any_text(text: str, other: str) -> None:
    assert accepts(literal_to_gbnf(text), text)
    assert accepts(literal_to_gbnf(text), other) == (other == text)


def test_choices_match_exactly_one_choice() -> None:
    grammar = choices_to_gbnf([*TRICKY, "yes", "yes"])
    assert grammar.count('"yes"') == 1
    for text in TRICKY:
        assert accepts(grammar, text)
    assert not accepts(grammar, "yesyes")
    assert not accepts(grammar, 'say "hi"\n')


@given(st.lists(st.text(ANY_CHAR, max_size=8), min_size=1, max_size=6), st.text(max_size=8))
def test_choices_of_any_texts(choices: list[str], other: str) -> None:
    grammar = choices_to_gbnf(choices)
    assert all(accepts(grammar, c) for c in choices)
    assert accepts(grammar, other) == (other in choices)


@pytest.mark.parametrize("text", ["a\x00", "\ud800"])
def test_ungenerable_characters_are_errors(text: str) -> None:
    with pytest.raises(ConstraintError, match="NUL or a surrogate"):
        literal_to_gbnf(text)
    with pytest.raises(ConstraintError, match="NUL or a surrogate"):
        choices_to_gbnf(["ok", text])


def test_no_choices_is_an_error() -> None:
    with pytest.raises(ConstraintError, match="at least one"):
        choices_to_gbnf([])
