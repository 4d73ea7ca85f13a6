"""Chunked, batched prefill (lmprog.backends.local.prefill) against one plain forward pass per
prompt, on the tiny model: the same KV and the same last hidden state, whatever the chunking,
the batch's mix of prompt lengths and of prefixes already computed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support.models import tiny_model_dir
from transformers import AutoModelForCausalLM

from lmprog.backends.local.forward import TransformersForward
from lmprog.backends.local.kvcache import growing_cache
from lmprog.backends.local.prefill import Pending, chunk_pass


@pytest.fixture(scope="module")
def decoder() -> Any:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
    return model.eval().get_decoder()


def _plain(
    decoder: Any, ids: list[int]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    cache = growing_cache()
    with torch.inference_mode():
        out = decoder(input_ids=torch.tensor([ids]), use_cache=True, cache=cache)
    kv = [(layer.keys[0], layer.values[0]) for layer in cache.layers]
    return kv, out.last_hidden_state[0]


@pytest.mark.parametrize("budget", [1, 5, 64])
def test_chunks_of_several_prompts_equal_one_pass_each(decoder: Any, budget: int) -> None:
    prompts = [list(range(5, 40)), list(range(7, 12)), [9], list(range(3, 23))]
    plain = [_plain(decoder, ids) for ids in prompts]
    # the second prompt starts with 3 tokens computed (a radix hit), the others with none
    rows = [Pending(ids, 0) for ids in prompts]
    kv, _ = plain[1]
    rows[1] = Pending(prompts[1], 3, [(k[:, :3], v[:, :3]) for k, v in kv])
    last: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        while any(not row.finished for row in rows):
            waiting = [row for row in rows if not row.finished]
            passes = chunk_pass(TransformersForward(decoder), waiting, budget, torch.device("cpu"))
            for row, hidden in passes:
                last[rows.index(row)] = hidden
    for i, (row, (kv, hidden)) in enumerate(zip(rows, plain, strict=True)):
        assert torch.allclose(last[i], hidden[-1], atol=1e-4), i
        for (k, v), (k2, v2) in zip(row.kv, kv, strict=True):
            assert torch.allclose(k, k2, atol=1e-4) and torch.allclose(v, v2, atol=1e-4), i
