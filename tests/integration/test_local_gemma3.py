"""lp.Local's lean Gemma 3 pass (lmprog.backends.local.gemma3) against transformers' modeling
code on the real default model: the same final hidden states for a prompt longer than the
sliding window, for chunked prefill of padded rows, and for decode steps with and without
left padding; and packed, a decode step in lmprog's kernels against the same step in torch's
operations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmprog.backends.local.forward import TransformersForward, model_forward
from lmprog.backends.local.gemma3 import Gemma3Forward
from lmprog.backends.local.kvcache import growing_cache
from lmprog.backends.local.native import kernels
from lmprog.backends.local.packing import attach_groups, pack_layers
from lmprog.backends.local.prefill import Pending, chunk_pass
from lmprog.backends.local.weights import resolve_model

pytestmark = pytest.mark.gemma

TOLERANCE = 1e-3  # hidden states reach ~500 in size; the passes differ by ~1e-4


@pytest.fixture(scope="module")
def passes() -> Iterator[tuple[Any, Any]]:
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(None).path, dtype=torch.float32, local_files_only=True
    ).eval()
    lean = model_forward(model)
    assert isinstance(lean, Gemma3Forward)
    with torch.inference_mode():
        yield TransformersForward(model.get_decoder()), lean


def _ids(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [int(i) for i in torch.randint(10, 20_000, (count,), generator=generator)]


def test_a_prompt_past_the_sliding_window_then_decode_steps(passes: tuple[Any, Any]) -> None:
    caches = [growing_cache(), growing_cache()]
    tokens = torch.tensor([_ids(600, 0)])  # the window is 512: sliding layers cut it
    positions = torch.arange(600)[None]
    out = [run(tokens, positions, cache) for run, cache in zip(passes, caches, strict=True)]
    assert torch.allclose(out[0], out[1], atol=TOLERANCE)
    for step in range(4):
        token = torch.tensor([[_ids(1, step + 1)[0]]])
        at = torch.tensor([[600 + step]])
        out = [run(token, at, cache) for run, cache in zip(passes, caches, strict=True)]
        assert torch.allclose(out[0], out[1], atol=TOLERANCE), step


def test_chunked_prefill_and_padded_decode(passes: tuple[Any, Any]) -> None:
    """Rows of different lengths: chunked prefill pads them on both sides, and the decode
    step after it pads the shorter ones on the left, as the engine lays them out."""
    prompts = [_ids(530, 10), _ids(40, 11), _ids(7, 12)]
    hidden, kvs = [], []
    for run in passes:
        rows = [Pending(ids, 0) for ids in prompts]
        last: dict[int, torch.Tensor] = {}
        while any(not row.finished for row in rows):
            waiting = [row for row in rows if not row.finished]
            for row, state in chunk_pass(run, waiting, 256, torch.device("cpu")):
                last[rows.index(row)] = state
        hidden.append(torch.stack([last[i] for i in range(len(rows))]))
        kvs.append([row.kv for row in rows])
    assert torch.allclose(hidden[0], hidden[1], atol=TOLERANCE)
    width = max(len(ids) for ids in prompts)
    pads = [width - len(ids) for ids in prompts]
    steps = []
    for run, rows_kv in zip(passes, kvs, strict=True):
        cache = growing_cache()
        for layer in range(len(rows_kv[0])):
            keys = [_pad(kv[layer][0], pad) for kv, pad in zip(rows_kv, pads, strict=True)]
            values = [_pad(kv[layer][1], pad) for kv, pad in zip(rows_kv, pads, strict=True)]
            cache.update(torch.stack(keys), torch.stack(values), layer)
        valid = torch.arange(width + 1)[None, :] >= torch.tensor(pads)[:, None]
        tokens = torch.tensor([[5], [6], [7]])
        positions = torch.tensor([[len(ids)] for ids in prompts])
        steps.append(run(tokens, positions, cache, valid))
    assert torch.allclose(steps[0], steps[1], atol=TOLERANCE)


def _pad(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    heads, _, dim = tensor.shape
    return torch.cat([tensor.new_zeros((heads, amount, dim)), tensor], dim=1)


@pytest.mark.skipif(kernels() is None, reason="lmprog's kernels cannot be built here")
def test_decode_layers_in_lmprogs_kernels_match_the_torch_operations() -> None:
    """Packed, a decode step's per-token work (norms, rotary, residuals, GELU) runs in
    kernels.c; the same packed pass with torch's operations gives the same hidden states: for
    one row past the sliding window, and for three rows padded on the left."""
    path = resolve_model(None).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    attach_groups(model, path)
    lean = model_forward(model)
    assert isinstance(lean, Gemma3Forward)
    pack_layers(lean, model.get_output_embeddings())
    assert lean._decode_layers() is not None
    fused = lean._decode

    def both(tokens: torch.Tensor, positions: torch.Tensor, caches: list[Any], valid: Any = None):
        out = []
        for decode, cache in zip((fused, []), caches, strict=True):
            lean._decode = decode  # [] has no layer: the torch operations
            out.append(lean(tokens, positions, cache, valid))
        assert torch.allclose(out[0], out[1], atol=TOLERANCE), (out[0] - out[1]).abs().max()
        return out

    with torch.inference_mode():
        caches = [growing_cache(), growing_cache()]
        both(torch.tensor([_ids(600, 0)]), torch.arange(600)[None], caches)
        for step in range(4):
            both(torch.tensor([[_ids(1, step + 1)[0]]]), torch.tensor([[600 + step]]), caches)

        lengths = [9, 5, 2]
        width = max(lengths)
        caches = [growing_cache(), growing_cache()]
        rows = [[0] * (width - n) + _ids(n, n) for n in lengths]
        valid = torch.tensor([[i >= width - n for i in range(width)] for n in lengths])
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        both(torch.tensor(rows), positions, caches, valid)
        for step in range(2):
            valid = torch.cat([valid, torch.ones(3, 1, dtype=torch.bool)], dim=1)
            tokens = torch.tensor([[5 + step], [6], [7]])
            at = torch.tensor([[n + step] for n in lengths])
            both(tokens, at, caches, valid)
