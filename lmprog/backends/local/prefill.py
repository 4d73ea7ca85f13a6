"""Prompts computed in chunks, several requests in one forward pass.

A long prompt computed in one go stalls every sequence that is decoding; short prompts computed
one by one each read all the weights. So the engine gives each step a budget of prompt tokens:
the waiting requests take their next chunks from it in order, and those chunks go through the
model together, then the decoding rows take their step.

The rows of one pass are laid out `[left padding | computed prefix | new chunk | right padding]`
with the prefixes aligned on their ends, so every row's real tokens are contiguous (a sliding
window over cache positions is a window over tokens) and the right padding, being after every
real token, is never attended to. Each row's KV is cut out of the pass's cache afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lmprog.backends.local.forward import Forward
from lmprog.backends.local.kvcache import growing_cache
from lmprog.backends.local.radix import LayerKV


@dataclass(eq=False)
class Pending:
    """One prompt on its way through the model."""

    ids: list[int]
    done: int  # tokens of `ids` whose KV is in `kv` (the radix cache's hit, to start with)
    kv: list[LayerKV] = field(default_factory=list)  # per layer [heads, done, head_dim]

    @property
    def finished(self) -> bool:
        return self.done == len(self.ids)


def chunk_pass(
    forward: Forward, rows: list[Pending], budget: int, device: torch.device
) -> list[tuple[Pending, torch.Tensor]]:
    """Compute the next chunks of `rows` (in order, `budget` tokens in all, every row at least
    one) in one forward pass. Advances each row; returns the rows that finished, each with its
    last token's final hidden state."""
    chunks: list[list[int]] = []
    for row in rows:
        take = max(1, min(len(row.ids) - row.done, budget))
        chunks.append(row.ids[row.done : row.done + take])
        budget -= take
        if budget <= 0:
            break
    rows = rows[: len(chunks)]
    past = max(row.done for row in rows)
    width = max(len(chunk) for chunk in chunks)
    cache = growing_cache()
    template = next((row.kv for row in rows if row.kv), None)
    if past and template is not None:
        for layer, (keys, values) in enumerate(template):
            cache.update(
                torch.stack([_left_padded(row, layer, 0, keys, past) for row in rows]),
                torch.stack([_left_padded(row, layer, 1, values, past) for row in rows]),
                layer,
            )
    tokens = torch.tensor([c + [0] * (width - len(c)) for c in chunks], device=device)
    positions = torch.tensor(
        [[row.done + j for j in range(width)] for row in rows], dtype=torch.long, device=device
    )
    valid = None
    padded = [row.done != past or len(c) != width for row, c in zip(rows, chunks, strict=True)]
    if any(padded):
        columns = torch.arange(past + width, device=device)[None, :]
        starts = torch.tensor([past - row.done for row in rows], device=device)[:, None]
        ends = torch.tensor([past + len(c) for c in chunks], device=device)[:, None]
        valid = (columns >= starts) & (columns < ends)
    hidden = forward(tokens, positions, cache, valid)
    finished = []
    for i, (row, chunk) in enumerate(zip(rows, chunks, strict=True)):
        start, end = past - row.done, past + len(chunk)
        row.kv = [(k[i, :, start:end], v[i, :, start:end]) for k, v in _layer_kv(cache)]
        row.done += len(chunk)
        if row.finished:
            finished.append((row, hidden[i, len(chunk) - 1]))
    return finished


def _left_padded(
    row: Pending, layer: int, which: int, template: torch.Tensor, past: int
) -> torch.Tensor:
    """Row's keys (which=0) or values (1) of `layer`, zero-padded on the left to `past`."""
    heads, _, dim = template.shape
    mine = row.kv[layer][which] if row.kv else template.new_zeros((heads, 0, dim))
    if mine.shape[1] == past:
        return mine
    return torch.cat([mine.new_zeros((heads, past - mine.shape[1], dim)), mine], dim=1)


def _layer_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]
