"""Shared prefixes: of two texts, of two tokenizations, and an index of prompts by prefix.

Engines reuse only a prompt's prefix from their cache, so several layers ask the same
questions: how much two prompts share (the prefix lint, batch scheduling), where a choice's
tokens start after the prompt's (select scoring), which server last saw a prefix (affinity).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def common_prefix_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the common prefix of two texts or two lists, by bisection on slice
    comparisons (C speed); `a` and `b` are of one type (a tuple never equals a list)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class PrefixIndex(Generic[T]):
    """What was last recorded for each prefix of the prompts seen, at `block`-character
    boundaries: a bounded map (least recently used out) from a prefix's hash to a value."""

    def __init__(self, block: int = 256, capacity: int = 100_000) -> None:
        self.block = block
        self.capacity = capacity
        self._values: OrderedDict[bytes, T] = OrderedDict()

    def keys(self, prompt: str) -> list[bytes]:
        """One hash per whole block of `prompt`: the i-th covers its first (i+1)*block chars."""
        digest = hashlib.blake2b(digest_size=8)
        keys = []
        for start in range(0, len(prompt) - self.block + 1, self.block):
            digest.update(prompt[start : start + self.block].encode("utf-8", "surrogatepass"))
            keys.append(digest.digest())
        return keys

    def longest(
        self, keys: list[bytes], accept: Callable[[T], bool] = lambda value: True
    ) -> tuple[T | None, int]:
        """The value recorded for the longest of these prefixes that `accept` takes, and that
        prefix's length in characters ((None, 0) when none is known)."""
        for depth in range(len(keys), 0, -1):
            value = self._values.get(keys[depth - 1])
            if value is not None and accept(value):
                self._values.move_to_end(keys[depth - 1])
                return value, depth * self.block
        return None, 0

    def record(self, keys: list[bytes], value: T) -> None:
        for key in keys:
            self._values[key] = value
            self._values.move_to_end(key)
        while len(self._values) > self.capacity:
            self._values.popitem(last=False)


def split_choice(
    prompt_ids: Sequence[int],
    full: list[T],
    token_id: Callable[[T], int] | None = None,
    at_least: int = 0,
) -> tuple[list[T], list[T]]:
    """Prompt+choice, tokenized as a whole, split where it leaves the prompt's tokenization:
    (the tokens it shares with the prompt, the choice's own tokens). Scoring a choice from its
    own tokens settles a word that straddles the boundary the way the model reads it.

    `full` may hold richer entries than ids (`token_id` reads the id of one); the split comes
    at `at_least` or later (a first token that has no logprob)."""
    ids = [token_id(entry) for entry in full] if token_id else full
    shared = max(at_least, common_prefix_length(list(prompt_ids), ids))
    return full[:shared], full[shared:]
