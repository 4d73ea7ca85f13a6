r"""Translate Python regexes, literals and choice lists into GBNF grammars for llama.cpp.

Why this exists: llama-server silently ignores a `regex` request field but enforces a GBNF
`grammar`, so lmprog enforces `regex=` by translating the pattern into a grammar whose `root`
derives exactly the strings the pattern matches in full (`re.fullmatch`). Patterns are parsed by
Python's own regex parser, so the accepted syntax is exactly Python's.

The grammar never admits a string the regex rejects, but admits fewer in three places: `\d`,
`\w`, `\s` are narrowed from Python's Unicode sets to `[0-9]`, `[0-9A-Za-z_]`, `[\t-\r ]` and `\W`
to ASCII non-word characters (`\D`, `\S`, `.`, negated classes, and everything under `(?a)` are
exact); IGNORECASE adds only the one-character `str.lower()`/`str.upper()` variants of a letter
(not Python's rarer folds such as KELVIN SIGN for "k"); NUL and surrogates are never generated.
Classes are always written positively (`.` is `[\x01-\t\x0B-\uD7FF\uE000-\U0010FFFF]`): with
`[^...]` llama.cpp lets a model emit invalid UTF-8 (seen on a real llama-server), and a required
NUL makes it fail the request.

Bounded repeats are emitted as GBNF `{m}`, `{m,}`, `{m,n}`, which llama.cpp expands linearly
(`x{0,1000}` stays one short line); llama.cpp refuses bounds of 2000 or more, so they are rejected.

Rejected with ConstraintError: lookahead/lookbehind, backreferences, conditionals, `\b`/`\B`,
anchors anywhere but the very start (`^`, `\A`) or end (`$`, `\Z`), atomic groups and possessive
repeats (except `x*+` of one character at the end; elsewhere they change which strings match),
unbounded repeats of something that can match "" (llama.cpp reports left recursion),
IGNORECASE negated classes containing letters, and required NUL or surrogate characters.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

from lmprog.errors import ConstraintError

if TYPE_CHECKING or sys.version_info < (3, 11):
    import sre_parse as _sre_parse
else:
    from re import _parser as _sre_parse

Ranges = tuple[tuple[int, int], ...]

_MAX_CHAR = 0x10FFFF
_UNGENERABLE = ((0, 0), (0xD800, 0xDFFF))  # NUL and surrogates
_MAX_BOUND = 1999  # llama.cpp's MAX_REPETITION_THRESHOLD is 2000
_MAX_CASED = 0x1FFFF  # no cased letters above this code point
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ASCII_CORE: dict[str, Ranges] = {
    "DIGIT": ((48, 57),),
    "SPACE": ((9, 13), (32, 32)),
    "WORD": ((48, 57), (65, 90), (95, 95), (97, 122)),
}
_ADVICE = "rewrite the pattern without it, or use a backend that enforces regex natively"


def _normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sort and merge overlapping or adjacent code point ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _negate(ranges: Ranges) -> Ranges:
    """The complement of normalized ranges among all code points."""
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CHAR:
        out.append((start, _MAX_CHAR))
    return tuple(out)


@cache
def _unicode_category(kind: str) -> Ranges:
    """Python's exact Unicode `\\d` ("DIGIT") or `\\s` ("SPACE") set."""
    test = str.isdecimal if kind == "DIGIT" else str.isspace
    return _normalize((cp, cp) for cp in range(_MAX_CHAR + 1) if test(chr(cp)))


def _category(name: str, ascii_only: bool, superset: bool) -> Ranges:
    """A subset (or, for `superset`, a superset) of Python's set for e.g. CATEGORY_NOT_DIGIT."""
    negated, kind = "_NOT_" in name, name.rsplit("_", 1)[1]
    wide = superset != negated  # the complement of a subset is a superset, and vice versa
    if ascii_only or not wide:
        base = _ASCII_CORE[kind]
    elif kind == "WORD":
        base = (*_ASCII_CORE[kind], (0x80, _MAX_CHAR))
    else:
        base = _unicode_category(kind)
    return _negate(base) if negated else base


def _char(cp: int, specials: str = "") -> str:
    """One code point as GBNF text, escaped with the escapes every llama.cpp version accepts."""
    c = chr(cp)
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c in specials or not c.isprintable():
        return f"\\x{cp:02X}" if cp < 0x100 else f"\\u{cp:04X}" if cp < 0x10000 else f"\\U{cp:08X}"
    return c


def _quote(text: str) -> str:
    """A GBNF string literal; ConstraintError if llama.cpp cannot generate a character of it."""
    if any(lo <= ord(c) <= hi for c in text for lo, hi in _UNGENERABLE):
        raise ConstraintError(f"{text!r} contains NUL or a surrogate; llama.cpp cannot generate it")
    return '"' + "".join(_char(ord(c)) for c in text) + '"'


def _char_class(ranges: Ranges) -> str:
    """A GBNF `[...]` (never `[^...]`)."""
    items = (_char(lo, "[]-^") + ("" if lo == hi else "-" + _char(hi, "[]-^")) for lo, hi in ranges)
    return f"[{''.join(items)}]"


def _join(parts: list[str]) -> str:
    """A GBNF sequence, merging adjacent string literals."""
    out: list[str] = []
    for part in parts:
        if out and part[0] == part[-1] == out[-1][0] == out[-1][-1] == '"':
            out[-1] = out[-1][:-1] + part[1:]
        else:
            out.append(part)
    return " ".join(out) or '""'


def _suffix(lo: int, hi: int) -> str:
    """The GBNF repetition operator for {lo,hi} (hi is MAXREPEAT when unbounded)."""
    if hi == _sre_parse.MAXREPEAT:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


class _Translator:
    """Walks one parsed pattern, collecting helper rules (`g1`, `g2`, ...) for its groups."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.rules: dict[str, str] = {}  # body -> name, so identical groups share a rule

    def fail(self, construct: str, advice: str = _ADVICE) -> NoReturn:
        raise ConstraintError(
            f"cannot enforce regex {self.pattern!r} with a llama.cpp grammar: "
            f"{construct} is not supported; {advice}"
        )

    def rule(self, body: str) -> str:
        return self.rules.setdefault(body, f"g{len(self.rules) + 1}")

    def body(self, node: Any, flags: int, start: bool, end: bool) -> str:
        """A rule body: a lone alternation becomes `a | b`, anything else one sequence."""
        while len(node) == 1 and node[0][0].name == "SUBPATTERN":
            _, add, remove, node = node[0][1]
            flags = (flags | add) & ~remove
        if len(node) == 1 and node[0][0].name == "BRANCH":
            return self.alternation(node[0][1][1], flags, start, end)
        return _join(self.parts(node, flags, start, end))

    def alternation(self, alts: Any, flags: int, start: bool, end: bool) -> str:
        return " | ".join(_join(self.parts(alt, flags, start, end)) for alt in alts)

    def parts(self, node: Any, flags: int, start: bool, end: bool) -> list[str]:
        """GBNF items for a sequence; `start`/`end`: whether it begins/ends the whole pattern."""
        out: list[str] = []
        ops = [op.name for op, _ in node]
        for i, (op, av) in enumerate(node):
            first = start and all(name == "AT" for name in ops[:i])
            last = end and all(name == "AT" for name in ops[i + 1 :])
            out += self.item(op.name, av, flags, first, last)
        return out

    def item(self, name: str, av: Any, flags: int, start: bool, end: bool) -> list[str]:
        """GBNF items for one parse-tree node."""
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            return [self.chars(self.charset(name, av, flags))]
        if name == "SUBPATTERN":
            return self.parts(av[3], (flags | av[1]) & ~av[2], start, end)
        if name == "BRANCH":
            return [self.rule(self.alternation(av[1], flags, start, end))]
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            return self.repeat(name, av, flags, end)
        if name == "AT":
            return self.anchor(av.name, start, end)
        if name in ("ASSERT", "ASSERT_NOT"):
            negative = "negative " if name == "ASSERT_NOT" else ""
            self.fail(f"{negative}{'lookahead' if av[0] == 1 else 'lookbehind'}")
        if name == "GROUPREF":
            self.fail("a backreference (\\N or (?P=name))")
        if name == "GROUPREF_EXISTS":
            self.fail("a conditional group (?(id)yes|no)")
        if name == "ATOMIC_GROUP":
            self.fail("an atomic group (?>...)", "use an ordinary group (...) if it is meant")
        self.fail(f"the regex construct {name}")

    def anchor(self, name: str, start: bool, end: bool) -> list[str]:
        """Nothing for ^ and \\A at the very start or $ and \\Z at the very end; else fail."""
        if (name.startswith("AT_BEGINNING") and start) or (name.startswith("AT_END") and end):
            return []
        if name in ("AT_BOUNDARY", "AT_NON_BOUNDARY"):
            self.fail("a word boundary (\\b or \\B)")
        self.fail("an anchor (^, $, \\A, \\Z) that is not at the very start or end of the pattern")

    def repeat(self, name: str, av: Any, flags: int, end: bool) -> list[str]:
        lo, hi, sub = av
        unbounded = hi == _sre_parse.MAXREPEAT
        single_char = len(sub) == 1 and sub[0][0].name in ("LITERAL", "NOT_LITERAL", "ANY", "IN")
        if name == "POSSESSIVE_REPEAT" and not (end and single_char):
            self.fail("a possessive repeat (*+, ++, ?+)", "use the greedy form if it is meant")
        if lo > _MAX_BOUND or (hi > _MAX_BOUND and not unbounded):
            self.fail(f"a repeat bound above {_MAX_BOUND} (llama.cpp's limit)", "use * / + instead")
        if unbounded and sub.getwidth()[0] == 0:
            self.fail(
                "an unbounded repeat of something that can match the empty string",
                "make the repeated part consume at least one character, e.g. (a|b)* not (a|b?)*",
            )
        inner = self.parts(sub, flags, False, False)
        if hi == 0 or not inner or (lo, hi) == (1, 1):
            return inner if hi else []
        atomic = len(inner) == 1 and inner[0][-1] not in "*+?}"  # a class, char or rule name
        atom = inner[0] if atomic else self.rule(_join(inner))
        return [atom + _suffix(lo, hi)]

    def charset(self, name: str, av: Any, flags: int) -> Ranges:
        """The code points one character-matching node accepts."""
        if name == "ANY":
            return ((0, _MAX_CHAR),) if flags & re.DOTALL else _negate(((10, 10),))
        if name != "IN":
            negated = name == "NOT_LITERAL"
            chars = _normalize(self.fold(av, av, flags, negated))
            return _negate(chars) if negated else chars
        negated = bool(av) and av[0][0].name == "NEGATE"
        ranges: list[tuple[int, int]] = []
        for op, arg in av[negated:]:
            if op.name == "CATEGORY":
                ranges += _category(arg.name, bool(flags & re.ASCII), superset=negated)
            else:
                lo, hi = (arg, arg) if op.name == "LITERAL" else arg
                ranges += self.fold(lo, hi, flags, negated)
        chars = _normalize(ranges)
        return _negate(chars) if negated else chars

    def fold(self, lo: int, hi: int, flags: int, negated: bool) -> list[tuple[int, int]]:
        """lo..hi plus, under IGNORECASE, the case variants Python accepts for it."""
        if not flags & re.IGNORECASE:
            return [(lo, hi)]
        chars = map(chr, range(lo, min(hi, _MAX_CASED) + 1))
        cased = [c for c in chars if c.lower() != c or c.upper() != c]
        if cased and negated:
            self.fail("IGNORECASE with a negated class of letters", "spell out both cases: [^aA]")
        oracle = re.compile(f"[{re.escape(chr(lo))}-{re.escape(chr(hi))}]", flags & (re.I | re.A))
        variants = {v for c in cased for v in (c.lower(), c.upper()) if len(v) == 1}
        return [(lo, hi), *((ord(v), ord(v)) for v in variants if oracle.fullmatch(v))]

    def chars(self, ranges: Ranges) -> str:
        """One GBNF item for a set of characters: a one-character string or a class."""
        ranges = _negate(_normalize([*_negate(ranges), *_UNGENERABLE]))
        if not ranges:
            self.fail("a character set without characters llama.cpp can generate", "remove it")
        if ranges[0][0] == ranges[0][1] and len(ranges) == 1:
            return _quote(chr(ranges[0][0]))
        return _char_class(ranges)


@lru_cache(maxsize=1024)
def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar whose `root` derives the strings that `re.fullmatch(pattern, s)` accepts."""
    try:
        parsed = _sre_parse.parse(pattern)
    except re.error as exc:
        message = f"invalid regex {pattern!r} at position {exc.pos}: {exc.msg}"
        raise ConstraintError(message) from exc
    translator = _Translator(pattern)
    root = translator.body(parsed, parsed.state.flags, True, True)
    lines = [f"# lmprog: re.fullmatch({pattern!r})", f"root ::= {root}"]
    lines += [f"{name} ::= {body}" for body, name in translator.rules.items()]
    return "\n".join(lines) + "\n"


def literal_to_gbnf(text: str) -> str:
    """A GBNF grammar matching exactly `text` (used to force a choice)."""
    return f"root ::= {_quote(text)}\n"


def choices_to_gbnf(choices: Sequence[str]) -> str:
    """A GBNF grammar matching exactly one of `choices`."""
    if not choices:
        raise ConstraintError("choices must contain at least one string")
    return "root ::= " + " | ".join(_quote(c) for c in dict.fromkeys(choices)) + "\n"
