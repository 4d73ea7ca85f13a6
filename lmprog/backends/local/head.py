"""The output head of lp.Local's model, run apart from the model so each step computes only
the logits it can use.

At batch 1 most of a decode step is reading the head (Gemma 3 270M: 262k rows, ~168M of its
270M parameters). Free decoding needs every row; under a constraint whose mask allows few
tokens (a select, a digit, JSON punctuation) only those rows are multiplied. On a CPU with
fbgemm the full head can be an int8 copy (a quarter of float32's bytes): its best
`RESCORED` candidates per row are then recomputed exactly from the float weights, so greedy
picks are those of the float head unless the best token is outside the int8 scan's top 64,
and only the far tail of the distribution carries int8 rounding.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

RESCORED = 64  # candidates per row that the int8 scan hands to the exact float rows


class OutputHead:
    """Logits from final hidden states: all rows, or only chosen ones."""

    def __init__(self, model: Any, *, int8: bool) -> None:
        linear = model.get_output_embeddings()
        self.weight: torch.Tensor = linear.weight.detach()  # [vocab, hidden]
        self.bias: torch.Tensor | None = getattr(linear, "bias", None)
        config = model.config.get_text_config()
        self.softcap: float | None = getattr(config, "final_logit_softcapping", None)
        self._packed = _pack_int8(self.weight, self.bias) if int8 else None

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> float32 [rows, vocab]."""
        if self._packed is None:
            out = torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        else:
            hidden = hidden.float()  # fbgemm takes float32 activations
            out = torch.ops.quantized.linear_dynamic(hidden, self._packed, True)
            best = out.topk(min(RESCORED, out.shape[-1]), dim=-1).indices
            out.scatter_(1, best, self._exact(hidden, best))
        return self._capped(out)

    def rows(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The logits of tokens `ids` only: [hidden], [n] -> float32 [n]."""
        return self._capped(self._exact(hidden[None], ids[None])[0])

    def _exact(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[rows, hidden], [rows, n] -> float32 [rows, n] from the float weights."""
        chosen = self.weight[ids]  # [rows, n, hidden]
        out = torch.einsum("rh,rnh->rn", hidden.to(chosen.dtype), chosen)
        if self.bias is not None:
            out = out + self.bias[ids]
        return out.float()

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap


def _pack_int8(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm's packed int8 weights, one scale per row (symmetric)."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, not yet gone (2.13)
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.float())
