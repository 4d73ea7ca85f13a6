"""The weight forms lp.Local runs a model in, and packing a model's layers into the fast one.

On a CPU, decoding a small model reads every weight once per step, so a step costs about what
its bytes cost to read and convert. fbgemm (in every x86 build of torch) multiplies float32
activations by float16 weights packed for AVX2 about 2-3x faster than float32 weights, with
float32 accumulation; GGUF models are stored here as float16 already (weights.py), so that
form loses nothing. The output head, the largest matrix, goes further: int8, rescored exactly
(head.py). int8 for the layers was tried and dropped: fbgemm quantizes activations per tensor,
and Gemma's activation outliers changed its greedy tokens within a few steps.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lmprog.errors import UnsupportedFeatureError

WeightForm = Literal["auto", "packed", "float32"]
WEIGHT_FORMS: tuple[WeightForm, ...] = ("auto", "packed", "float32")


def can_pack(device: torch.device) -> bool:
    """fbgemm's packed kernels exist here (x86 CPUs; not ARM, not a GPU)."""
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def resolve_form(
    weights: str, device: torch.device, dtype: torch.dtype, backend: str
) -> Literal["packed", "float32"]:
    """The form to load in: `auto` packs where fbgemm can and activations are float32."""
    if weights not in WEIGHT_FORMS:
        raise ValueError(f"{backend}: weights must be one of {WEIGHT_FORMS}, not {weights!r}")
    if weights == "float32":
        return "float32"
    possible = can_pack(device) and dtype == torch.float32
    if weights == "auto":
        return "packed" if possible else "float32"
    if not possible:
        raise UnsupportedFeatureError(
            backend,
            f"pack weights on {device} in {dtype}: fbgemm runs on x86 CPUs, float32 activations",
            'use weights="float32" (or "auto")',
        )
    return "packed"


class Float16Linear(torch.nn.Module):
    """A Linear whose weight is fbgemm-packed float16; activations stay float32."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.out_features = int(weight.shape[0])
        self.packed: Any = torch.ops.quantized.linear_prepack_fp16(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(flat, self.packed)
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_layers(model: torch.nn.Module, head: torch.nn.Module) -> None:
    """Replace every Linear of `model` but `head` (which head.py handles) with Float16Linear;
    the float32 weights are freed."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                setattr(parent, name, Float16Linear(child))
