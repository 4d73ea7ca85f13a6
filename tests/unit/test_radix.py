"""The radix KV cache on its own: matching, splitting, LRU eviction and its counters."""

from __future__ import annotations

import torch

from lmprog.backends.local.radix import RadixCache

LAYERS, HEADS, DIM = 2, 1, 3


def kv_for(ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fake KV whose every entry encodes the token id and its position, so a returned prefix
    can be checked element by element."""
    base = torch.tensor([float(t * 1000 + p) for p, t in enumerate(ids)])
    keys = base.view(1, -1, 1).expand(HEADS, len(ids), DIM).clone()
    return [(keys + layer, -keys - layer) for layer in range(LAYERS)]


def assert_prefix_kv(kv: list[tuple[torch.Tensor, torch.Tensor]], ids: list[int]) -> None:
    expected = kv_for(ids)
    assert len(kv) == LAYERS
    for (k, v), (ek, ev) in zip(kv, expected, strict=True):
        assert torch.equal(k, ek) and torch.equal(v, ev)


def test_longest_prefix_is_returned_with_its_kv() -> None:
    cache = RadixCache(capacity_tokens=100)
    cache.insert([1, 2, 3, 4], kv_for([1, 2, 3, 4]))
    length, kv = cache.match([1, 2, 3, 9, 9])
    assert length == 3
    assert_prefix_kv(kv, [1, 2, 3])
    assert cache.match([7]) == (0, [])


def test_diverging_inserts_split_an_edge_and_both_branches_match() -> None:
    cache = RadixCache(capacity_tokens=100)
    cache.insert([1, 2, 3, 4], kv_for([1, 2, 3, 4]))
    cache.insert([1, 2, 5, 6], kv_for([1, 2, 5, 6]))
    assert cache.size_tokens == 6  # 1 2 shared, then 3 4 and 5 6
    for ids in ([1, 2, 3, 4], [1, 2, 5, 6]):
        length, kv = cache.match(ids)
        assert length == 4
        assert_prefix_kv(kv, ids)


def test_least_recently_used_leaves_go_first_when_over_capacity() -> None:
    cache = RadixCache(capacity_tokens=6)
    cache.insert([1, 2, 3], kv_for([1, 2, 3]))
    cache.insert([4, 5, 6], kv_for([4, 5, 6]))
    cache.match([1, 2, 3])  # now the most recently used
    cache.insert([7, 8, 9], kv_for([7, 8, 9]))
    assert cache.size_tokens <= 6
    assert cache.match([1, 2, 3])[0] == 3
    assert cache.match([4, 5, 6])[0] == 0
    assert cache.stats.evicted_tokens == 3


def test_capacity_zero_disables_the_cache() -> None:
    cache = RadixCache(capacity_tokens=0)
    cache.insert([1, 2, 3], kv_for([1, 2, 3]))
    assert cache.match([1, 2, 3]) == (0, [])


def test_counters_add_up() -> None:
    cache = RadixCache(capacity_tokens=100)
    cache.record(hit=0, computed=10)
    cache.record(hit=8, computed=2)
    assert (cache.stats.lookups, cache.stats.hit_tokens, cache.stats.miss_tokens) == (2, 8, 12)
    assert cache.stats.hit_rate == 8 / 20
