"""The decode loop's KV cache: transformers' DynamicCache with layers that grow in place.

DynamicLayer appends each step's keys and values with torch.cat, copying the whole cache:
a step then costs O(context), a generation O(context²) (a 512-token summary after a 600-token
prompt spent most of its time copying). GrowingLayer keeps them in a buffer with room to
spare and writes new tokens into it, so an append copies only the new tokens; `keys`/`values`
stay plain `[batch, heads, tokens, head_dim]` tensors (views of the buffer), which the engine
may replace outright (joining or dropping rows): the next append then starts a new buffer.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_SPARE = 256  # tokens of room a new buffer gets, at least


def growing_cache() -> DynamicCache:
    """An empty cache whose layers are GrowingLayers (every layer keeps every token)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer  # layers are made on first update
    return cache


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A DynamicLayer whose appends write into spare room instead of copying."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None  # set by lazy_initialization
        self.keys = _append(self.keys, key_states)
        self.values = _append(self.values, value_states)
        return self.keys, self.values


def _append(current: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`current` followed by `new` along the token axis: written into `current`'s buffer when
    `current` is a prefix view with room after it, else copied into a new, larger buffer."""
    length = current.shape[-2] if current.dim() == 4 else 0
    total = length + new.shape[-2]
    buffer = _buffer_of(current)
    if buffer is None or buffer.shape[-2] < total or buffer.shape[:2] != new.shape[:2]:
        buffer = new.new_empty((*new.shape[:2], total + max(MIN_SPARE, total // 2), new.shape[3]))
        if length:
            buffer[:, :, :length] = current
    buffer[:, :, length:total] = new
    return buffer[:, :, :total]


def _buffer_of(tensor: torch.Tensor) -> torch.Tensor | None:
    """The buffer `tensor` is a leading slice of (along tokens), if it is one of ours."""
    base = tensor._base
    if base is None or base.dim() != 4 or tensor.dim() != 4:
        return None
    if tensor.data_ptr() != base.data_ptr() or tensor.stride() != base.stride():
        return None
    return base
