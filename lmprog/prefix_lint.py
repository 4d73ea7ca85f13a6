"""The prefix-order lint: warn when text that varies between calls comes before text they share.

Engines reuse only a prompt's *prefix* from their cache. A program whose prompts begin with
something that changes per call (a timestamp, the question, a retrieved document) and only then
carry a long block every call shares (instructions, few-shot examples) recomputes that block
every time: the classic cause of a 0% hit rate. This lint notices it from the prompts a
program actually sends.

How it decides (cheap, and biased against false alarms):

- Per program function, the prompt of the first request (gen or select) of each of its first
  SAMPLE_RUNS runs (batch items, or successive run() calls such as the turns of a chat) is
  compared with the first such prompt of the same primitive on the same backend. Later
  requests of one run extend its first prompt, so they are not looked at.
- For such a pair, `prefix` is their common prefix and `shared` is how much of the first
  prompt after `prefix` also occurs in the other prompt after `prefix`, estimated from at most
  PROBES windows of WINDOW characters spread evenly over it.
- It warns when `prefix` is under PREFIX_FRACTION of the shorter prompt, `shared` is at least
  MIN_SHARED_CHARS (about 64 tokens), and `shared` exceeds `prefix` (putting the shared text
  first would at least double what the cache can serve). A well ordered batch (shared
  instructions first, the varying question last) has a long prefix and never warns.
- At most once per program function, as a `PrefixOrderWarning` attributed to the `s += ...`
  line that appended the text where the prompts first differ, naming the primitive.

Limits: only the first request of each run is sampled, so a program whose first prompt is the
same every time and whose later one is badly ordered is not caught. Text that varies inside
one argument and happens to contain a long common block (a shared signature in emails) can
trigger it; `warnings.filterwarnings("ignore", category=lp.PrefixOrderWarning)` silences it.
The warning is issued on lmprog's loop while the program runs: under `-W error` it becomes
the program's error.
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from lmprog.prefix import common_prefix_length

SAMPLE_RUNS = 8
PREFIX_FRACTION = 0.3
MIN_SHARED_CHARS = 256
WINDOW = 32
PROBES = 64

Origin = tuple[str, int]  # (file, line) of an `s += ...`

_LMPROG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class PrefixOrderWarning(UserWarning):
    """A program's prompts start with text that varies and only then share text: the engine's
    prefix cache cannot reuse the shared part."""


def caller_origin() -> Origin | None:
    """File and line of the nearest caller outside lmprog (and contextlib, for `with s.user():`)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_LMPROG_DIR) and filename != contextlib.__file__:
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


@dataclass
class _Lint:
    """What the lint keeps about one program function until it has warned or seen enough."""

    program: str
    fallback: Origin
    observed: int = 0
    firsts: dict[tuple[str, str], str] = field(default_factory=dict)  # (backend, primitive)
    done: bool = False


_programs: weakref.WeakKeyDictionary[Callable[..., Any], _Lint] = weakref.WeakKeyDictionary()


def probe(func: Callable[..., Any], program: str) -> RunProbe | None:
    """The probe for one run of `func`, or None once the lint has nothing left to check (so
    later runs record nothing)."""
    func = inspect.unwrap(func)
    try:
        lint = _programs.get(func)
    except TypeError:  # a callable that cannot be weakly referenced: not linted
        return None
    if lint is None:
        code = getattr(func, "__code__", None)
        fallback = (code.co_filename, code.co_firstlineno) if code else ("<program>", 0)
        lint = _programs[func] = _Lint(program, fallback)
    return None if lint.done else RunProbe(lint)


class RunProbe:
    """Shared by one run's state and its forks: takes the run's first request prompt."""

    def __init__(self, lint: _Lint) -> None:
        self._lint = lint
        self._taken = False

    def observe(
        self, backend: str, primitive: str, prompt: str, marks: Sequence[tuple[int, Origin]]
    ) -> None:
        """Compare the run's first prompt with the program's first on `backend` (its name: the
        chat template may differ between backends); `marks` are the offsets where each
        `s += ...` line's text starts in the prompt."""
        lint = self._lint
        if self._taken or lint.done:
            return
        self._taken = True
        lint.observed += 1
        key = (backend, primitive)
        first = lint.firsts.get(key)
        if first is None:
            lint.firsts[key] = prompt
            finding = None
        else:
            finding = _misorder(first, prompt)
        if finding is None and lint.observed < SAMPLE_RUNS:
            return
        lint.done = True
        lint.firsts.clear()
        if finding is not None:
            prefix, shared = finding
            filename, line = _origin_at(marks, prefix) or lint.fallback
            message = (
                f"program {lint.program!r}: the prompt of {primitive} begins with text that "
                f"differs between calls (appended at {os.path.basename(filename)}:{line}) and "
                f"only after it has ~{shared:,} characters every call shares, so the engine's "
                f"prefix cache can reuse only the first {prefix:,} characters. Append the "
                "shared text (instructions, examples) before the text that varies."
            )
            warnings.warn_explicit(message, PrefixOrderWarning, filename, line)


def _misorder(first: str, other: str) -> tuple[int, int] | None:
    """(prefix, shared) when the prompts share much more after they first differ than before."""
    prefix = common_prefix_length(first, other)
    if prefix >= PREFIX_FRACTION * min(len(first), len(other)):
        return None
    shared = _shared_chars(first[prefix:], other[prefix:])
    if shared < MIN_SHARED_CHARS or shared <= prefix:
        return None
    return prefix, shared


def _shared_chars(rest: str, other: str) -> int:
    """About how many characters of `rest` also occur in `other`, from sampled windows."""
    windows = len(rest) // WINDOW
    probes = min(windows, PROBES)
    if not probes:
        return 0
    starts = (k * windows // probes * WINDOW for k in range(probes))
    found = sum(rest[start : start + WINDOW] in other for start in starts)
    return found * len(rest) // probes


def _origin_at(marks: Sequence[tuple[int, Origin]], offset: int) -> Origin | None:
    index = bisect.bisect_right(marks, offset, key=lambda mark: mark[0])
    return marks[index - 1][1] if index else None
