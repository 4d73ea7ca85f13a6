"""lp.Local's fast paths, each against the plain computation it replaces: the growing KV cache
(appends in place, same tensors as DynamicCache), float16-packed layers, and the output head
(a 4-bit or int8 scan with exact rescoring, rows of a mask only)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache

from lmprog.backends.local import head as head_module
from lmprog.backends.local.head import RESCORED, OutputHead
from lmprog.backends.local.kvcache import GrowingLayer, growing_cache
from lmprog.backends.local.native import kernels
from lmprog.backends.local.packing import Float16Linear, can_pack, pack_layers, resolve_form
from lmprog.errors import UnsupportedFeatureError

needs_fbgemm = pytest.mark.skipif(not can_pack(torch.device("cpu")), reason="no fbgemm")


def _kv(batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 2, tokens, 8), torch.randn(batch, 2, tokens, 8)


def test_growing_cache_holds_what_dynamic_cache_holds() -> None:
    grown, plain = growing_cache(), DynamicCache()
    for step, tokens in enumerate([5, 1, 1, 300, 1, 1]):
        for layer in range(3):
            keys, values = _kv(2, tokens)
            got = grown.update(keys, values, layer)
            want = plain.update(keys, values, layer)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), step
    assert grown.get_seq_length() == plain.get_seq_length() == 309
    assert all(isinstance(layer, GrowingLayer) for layer in grown.layers)


def test_appending_a_token_does_not_copy_the_cache() -> None:
    """DynamicLayer's torch.cat copied the whole cache every step (O(context²) generations:
    SGLang's test_parallel_decoding never finished on lp.Local); appends write in place."""
    cache = growing_cache()
    cache.update(*_kv(1, 100), 0)
    layer: Any = cache.layers[0]
    start = layer.keys.data_ptr()
    for _ in range(200):  # within the spare room of the first buffer
        cache.update(*_kv(1, 1), 0)
    assert layer.keys.data_ptr() == start
    assert cache.get_seq_length() == 300


def test_keys_replaced_from_outside_start_a_new_buffer() -> None:
    """The engine replaces keys/values when rows join or leave a batch."""
    cache = growing_cache()
    cache.update(*_kv(2, 10), 0)
    layer: Any = cache.layers[0]
    kept_keys = layer.keys[torch.tensor([1])]
    layer.keys, layer.values = kept_keys, layer.values[torch.tensor([1])]
    new_keys, new_values = _kv(1, 1)
    keys, _ = cache.update(new_keys, new_values, 0)
    assert torch.equal(keys, torch.cat([kept_keys, new_keys], dim=2))


@needs_fbgemm
def test_float16_linear_is_a_linear_with_float16_weights() -> None:
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    rounded = torch.nn.functional.linear(x, linear.weight.half().float(), linear.bias)
    assert torch.allclose(Float16Linear(linear)(x), rounded, atol=1e-4, rtol=1e-4)


@needs_fbgemm
def test_pack_layers_leaves_the_head() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    pack_layers(model, model[2])
    assert isinstance(model[0], Float16Linear) and isinstance(model[2], torch.nn.Linear)


def test_weight_forms() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_form("float32", cpu, torch.float32, "lp.Local()") == "float32"
    assert resolve_form("auto", cuda, torch.bfloat16, "lp.Local()") == "float32"
    assert resolve_form("auto", cpu, torch.bfloat16, "lp.Local()") == "float32"
    with pytest.raises(UnsupportedFeatureError, match=r"lp\.Local\(\) cannot pack weights"):
        resolve_form("packed", cuda, torch.bfloat16, "lp.Local()")
    with pytest.raises(ValueError, match="weights must be one of"):
        resolve_form("int3", cpu, torch.float32, "lp.Local()")


class _Model(torch.nn.Module):
    """What OutputHead reads of a transformers model: its output embeddings and config."""

    def __init__(self, vocab: int, hidden: int, softcap: float | None) -> None:
        super().__init__()
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        text = type("TextConfig", (), {"final_logit_softcapping": softcap})()
        self.config = type("Config", (), {"get_text_config": lambda _self: text})()

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.head


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_rows_are_the_full_logits_at_those_ids(softcap: float | None) -> None:
    model = _Model(1000, 32, softcap)
    head = OutputHead(model, packed=False)
    hidden = torch.randn(32)
    ids = torch.tensor([3, 17, 999])
    full = head.logits(hidden[None])[0]
    assert torch.allclose(head.rows(hidden, ids), full[ids], atol=1e-5)


@needs_fbgemm
@pytest.mark.parametrize(("scan", "rounding"), [("int4", 0.15), ("int8", 0.05)])
def test_the_packed_head_rescoring_its_best_candidates_exactly(
    scan: str, rounding: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pass (lmprog's 4-bit kernel, or fbgemm's int8 where it cannot be built) only
    ranks: its best candidates carry the exact logits."""
    if scan == "int4" and kernels() is None:
        pytest.skip("lmprog's kernels cannot be built here (see native.py)")
    if scan == "int8":
        monkeypatch.setattr(head_module, "kernels", lambda: None)
    torch.manual_seed(0)
    model = _Model(5000, 64, None)
    hidden = torch.randn(4, 64)
    exact = OutputHead(model, packed=False).logits(hidden)
    fast = OutputHead(model, packed=True).logits(hidden)
    assert torch.equal(fast.argmax(-1), exact.argmax(-1))
    best = exact.topk(RESCORED // 2, dim=-1).indices
    assert torch.allclose(fast.gather(1, best), exact.gather(1, best), atol=1e-4)
    tail = (fast - exact).abs().max() / exact.abs().max()
    assert 0 < tail < rounding  # the scan's rounding elsewhere, and only that
