"""The model's forward pass as the engine calls it: tokens, positions and a KV cache in, final
hidden states out. Gemma 3 (the default model) gets a lean pass of its own (gemma3.py); every
other model runs transformers' modeling code."""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch

from lmprog.backends.local.gemma3 import lean_forward


class Forward(Protocol):
    """[rows, new] tokens and positions, a cache to append to, and per row which cache
    columns (past and new) hold real tokens (None: all) -> [rows, new, hidden]."""

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class TransformersForward(torch.nn.Module):
    """transformers' decoder, called with the engine's arguments."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self._cache_arg = _cache_argument(decoder)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.decoder(
            input_ids=tokens,
            attention_mask=None if valid is None else valid.long(),
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: cache},
        )
        hidden: torch.Tensor = out.last_hidden_state
        return hidden


def model_forward(model: Any) -> torch.nn.Module:
    """The pass to run `model`'s decoder with: the lean one where it covers the model. The
    result holds the decoder's weights (its Linears are what packing.pack_layers packs); the
    lean pass holds them fused, so transformers' own layers can be freed with the model."""
    return lean_forward(model) or TransformersForward(model.get_decoder())


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: `cache` in recent transformers (5.25 has
    it, and warns that `past_key_values` is deprecated), `past_key_values` in older ones."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
