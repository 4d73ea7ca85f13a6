"""A radix tree of token prefixes holding their KV caches, so shared prefixes are computed once.

A program's second call starts with the whole text of its first; fork branches and batch items
start with the same few-shot prefix. Each edge of the tree is a run of token ids with the keys
and values the model computed for them (per layer, `[heads, tokens, head_dim]`). A lookup walks
the tree as far as the ids agree and returns the KV of that prefix; an insert stores what was
new. Memory is bounded: when the tree holds more than `capacity_tokens`, the least recently used
leaves are dropped. This is the idea of SGLang's RadixAttention, on plain tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [heads, tokens, head_dim]

_clock = itertools.count()


@dataclass(eq=False)
class _Node:
    ids: tuple[int, ...]
    kv: list[LayerKV]
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0

    def split(self, at: int) -> _Node:
        """Cut this edge after `at` tokens; the head keeps the first part and becomes our
        parent. Returns the head."""
        head = _Node(
            ids=self.ids[:at],
            kv=[(k[:, :at].clone(), v[:, :at].clone()) for k, v in self.kv],
            parent=self.parent,
            last_used=self.last_used,
        )
        assert self.parent is not None
        self.parent.children[self.ids[0]] = head
        self.ids = self.ids[at:]
        self.kv = [(k[:, at:].clone(), v[:, at:].clone()) for k, v in self.kv]
        self.parent = head
        head.children[self.ids[0]] = self
        return head


@dataclass
class CacheStats:
    """Counters since the cache was made: prompt tokens found in it vs computed."""

    lookups: int = 0
    hit_tokens: int = 0
    miss_tokens: int = 0
    evicted_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hit_tokens + self.miss_tokens
        return self.hit_tokens / total if total else 0.0


class RadixCache:
    """Token-prefix tree of KV tensors with LRU eviction (not thread-safe: one engine thread
    owns it)."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.stats = CacheStats()
        self._root = _Node(ids=(), kv=[], parent=None)
        self._tokens = 0

    @property
    def size_tokens(self) -> int:
        return self._tokens

    def match(self, ids: Sequence[int]) -> tuple[int, list[LayerKV]]:
        """The longest cached prefix of `ids`: its length and its KV (concatenated per layer,
        `[heads, length, head_dim]`; empty list when nothing matched)."""
        now = next(_clock)
        walked = self._walk(ids)
        for child, _ in walked:
            child.last_used = now
        pieces = [[(k[:, :common], v[:, :common]) for k, v in child.kv] for child, common in walked]
        length = sum(common for _, common in walked)
        if not pieces:
            return 0, []
        layers = len(pieces[0])
        kv = [
            (
                torch.cat([p[layer][0] for p in pieces], dim=1),
                torch.cat([p[layer][1] for p in pieces], dim=1),
            )
            for layer in range(layers)
        ]
        return length, kv

    def prefix_length(self, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` the tree holds (a lookup that copies nothing)."""
        return sum(common for _, common in self._walk(ids))

    def _walk(self, ids: Sequence[int]) -> list[tuple[_Node, int]]:
        """The edges `ids` follows from the root, each with how many of its tokens match."""
        node, length, walked = self._root, 0, []
        while length < len(ids):
            child = node.children.get(ids[length])
            if child is None:
                break
            common = common_length(child.ids, ids[length:])
            walked.append((child, common))
            length += common
            if common < len(child.ids):
                break
            node = child
        return walked

    def record(self, hit: int, computed: int) -> None:
        self.stats.lookups += 1
        self.stats.hit_tokens += hit
        self.stats.miss_tokens += computed

    def insert(self, ids: Sequence[int], kv: Sequence[LayerKV]) -> None:
        """Store the KV of `ids` (`[heads, len(ids), head_dim]` per layer); parts already in
        the tree are kept as they are."""
        if self.capacity_tokens <= 0 or not ids:
            return
        node, length = self._root, 0
        now = next(_clock)
        while length < len(ids):
            child = node.children.get(ids[length])
            if child is None:
                rest = tuple(ids[length:])
                leaf = _Node(
                    ids=rest,
                    kv=[(k[:, length:].clone(), v[:, length:].clone()) for k, v in kv],
                    parent=node,
                    last_used=now,
                )
                node.children[rest[0]] = leaf
                self._tokens += len(rest)
                break
            common = common_length(child.ids, ids[length:])
            child.last_used = now
            if common < len(child.ids):
                child = child.split(common)
            length += common
            node = child
        self._evict()

    def clear(self) -> None:
        self._root = _Node(ids=(), kv=[], parent=None)
        self._tokens = 0

    def _evict(self) -> None:
        while self._tokens > self.capacity_tokens:
            leaves = [n for n in self._nodes() if not n.children]
            if not leaves:
                return
            victim = min(leaves, key=lambda n: n.last_used)
            assert victim.parent is not None
            del victim.parent.children[victim.ids[0]]
            self._tokens -= len(victim.ids)
            self.stats.evicted_tokens += len(victim.ids)

    def _nodes(self) -> list[_Node]:
        out, todo = [], list(self._root.children.values())
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(node.children.values())
        return out


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
