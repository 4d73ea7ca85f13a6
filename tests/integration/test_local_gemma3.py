"""lp.Local's lean Gemma 3 pass (lmprog.backends.local.gemma3) against transformers' modeling
code on the real default model: the same final hidden states for a prompt longer than the
sliding window, for chunked prefill of padded rows, and for decode steps with and without
left padding."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmprog.backends.local.forward import TransformersForward, model_forward
from lmprog.backends.local.gemma3 import Gemma3Forward
from lmprog.backends.local.kvcache import growing_cache
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
