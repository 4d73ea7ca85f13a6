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
from collections.abc import Callable
from typing import Any

import torch

from lmprog.backends.local.native import Kernels, kernels

RESCORED = 64  # candidates per row that the scan hands to the exact float rows
Scan = Callable[[torch.Tensor], torch.Tensor]  # float32 [rows, hidden] -> approximate logits


class OutputHead:
    """Logits from final hidden states: all rows, or only chosen ones."""

    def __init__(self, model: Any, *, packed: bool) -> None:
        linear = model.get_output_embeddings()
        self.weight: torch.Tensor = linear.weight.detach()  # [vocab, hidden]
        self.bias: torch.Tensor | None = getattr(linear, "bias", None)
        config = model.config.get_text_config()
        self.softcap: float | None = getattr(config, "final_logit_softcapping", None)
        self._scan = _first_pass(self.weight, self.bias) if packed else None

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> float32 [rows, vocab]."""
        if self._scan is None:
            out = torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        else:
            hidden = hidden.float().contiguous()
            out = self._scan(hidden)
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


def _first_pass(weight: torch.Tensor, bias: torch.Tensor | None) -> Scan:
    """The cheapest scan this machine has: lmprog's 4-bit kernel, else fbgemm's int8."""
    native = kernels()
    if native is not None and weight.shape[1] % 64 == 0:
        return _int4_scan(native, weight, bias)
    return _int8_scan(weight, bias)


def _int4_scan(native: Kernels, weight: torch.Tensor, bias: torch.Tensor | None) -> Scan:
    """4-bit symmetric weights, one scale per 64 (~a seventh of float32's bytes), in the
    layout kernels.c's lmk_scan_q4 reads."""
    rows, size = weight.shape
    groups = weight.float().view(rows, size // 64, 64)
    scale = (groups.abs().amax(dim=-1) / 7).clamp(min=1e-12)
    levels = (torch.round(groups / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8)
    packed = (levels[..., :32] | (levels[..., 32:] << 4)).reshape(rows, size // 2).contiguous()
    scale = scale.contiguous()
    del groups, levels
    added = None if bias is None else bias.float()

    def scan(hidden: torch.Tensor) -> torch.Tensor:
        out = native.scan_q4(packed, scale, hidden)
        return out if added is None else out.add_(added)

    return scan


def _int8_scan(weight: torch.Tensor, bias: torch.Tensor | None) -> Scan:
    """fbgemm's packed int8 weights, one scale per row (symmetric)."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, not yet gone (2.13)
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.float())

    def scan(hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(hidden, packed, True)
        return out

    return scan
