"""The weight forms lp.Local runs a model in, and packing a model's layers into the fast one.

On a CPU, decoding a small model reads every weight once per step, so a step costs about what
its bytes cost to read and convert. fbgemm (in every x86 build of torch) multiplies float32
activations by float16 weights packed for AVX2 about 2-3x faster than float32 weights, with
float32 accumulation; GGUF models are stored here as float16 already (weights.py), so that
form loses nothing. The output head, the largest matrix, goes further: a 4-bit or int8 scan,
rescored exactly (head.py). fbgemm's int8 for the layers was tried and dropped: it quantizes
activations per tensor, and Gemma's activation outliers changed its greedy tokens within a few
steps.

A GGUF model goes further still: its layers' weights are integer groups (groups.py), which
lmprog's own kernel (native.py) multiplies by float32 activations for decode steps, reading
~1.1 bytes a weight and computing with the GGUF's exact values; prefill chunks, with many
rows, keep fbgemm's float16 kernel, which is faster there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from lmprog.backends.local.groups import (
    GROUPS_FILE,
    IntGroups,
    from_tensors,
    give_groups,
    groups_of,
)
from lmprog.backends.local.native import Kernels, kernels
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


class GroupLinear(torch.nn.Module):
    """A Linear on integer groups: up to `KERNEL_ROWS` rows (decode steps) in lmprog's kernel,
    more (prefill chunks) in fbgemm's float16 one."""

    KERNEL_ROWS = 4

    def __init__(self, linear: torch.nn.Linear, groups: IntGroups, native: Kernels) -> None:
        super().__init__()
        self.groups, self.native = groups, native
        self.rows_at_once = Float16Linear(linear)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.out_features = int(groups.values.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > self.KERNEL_ROWS:
            many: torch.Tensor = self.rows_at_once(x)
            return many
        groups = self.groups
        out = self.native.gemv_i8(groups.values, groups.scale, groups.offset, flat.contiguous())
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def attach_groups(model: torch.nn.Module, folder: Path) -> None:
    """Give each Linear of `model` whose weight the folder holds as integer groups (a converted
    GGUF) those groups, which fusing layers (gemma3.py) and pack_layers read.
    Nothing where lmprog's kernels cannot run here."""
    path = folder / GROUPS_FILE
    if kernels() is None or not path.is_file():
        return
    from safetensors.torch import load_file

    stored = from_tensors(load_file(str(path)))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in stored:
            give_groups(module, stored[f"{name}.weight"])


def pack_layers(model: torch.nn.Module, head: torch.nn.Module) -> None:
    """Replace every Linear of `model` but `head` (which head.py handles) with a GroupLinear
    where it has integer groups, else a Float16Linear; the float32 weights are freed."""
    native = kernels()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                groups = groups_of(child)
                if groups is not None and native is not None:
                    setattr(parent, name, GroupLinear(child, groups, native))
                else:
                    setattr(parent, name, Float16Linear(child))
