"""A GGUF's quantized weights as integer groups: int8 values with a float32 scale (and, for
Q4_K, an offset) per group of 16 or 32 columns, the form lp.Local's decode kernel reads
(kernels.c, lmk_gemv_i8).

Q8_0, Q5_0, Q4_K and Q6_K blocks are exactly such groups, so the kernel multiplies by the
GGUF's own values at ~1.1 bytes a weight, where float16 takes 2. The values are taken out with
gguf's own `dequantize_blocks` on copies of the blocks whose scales are set to one (no bit
layout is decoded here), and a tensor is kept only if its groups rebuild gguf's dequantized
values bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

GROUPS_FILE = "groups.safetensors"  # beside model.safetensors in a converted folder
_ATTRIBUTE = "lmprog_int_groups"  # where a Linear holds its groups
_ONE = 0x3C00  # float16 1.0
_ZERO = 0x0000


@dataclass(frozen=True)
class IntGroups:
    """weight[j, c] = scale[j, c // g] * values[j, c] + offset[j, c // g] (offset None: 0)."""

    values: torch.Tensor  # int8 [out, in]
    scale: torch.Tensor  # float32 [out, in / g]
    offset: torch.Tensor | None

    @property
    def group(self) -> int:
        return int(self.values.shape[1] // self.scale.shape[1])

    def regrouped(self, group: int) -> IntGroups:
        """The same weights in smaller groups (each scale repeated)."""
        times = self.group // group
        return IntGroups(
            self.values,
            self.scale.repeat_interleave(times, dim=1),
            None if self.offset is None else self.offset.repeat_interleave(times, dim=1),
        )

    def dequantized(self) -> torch.Tensor:
        rows, size = self.values.shape
        grouped = self.values.float().view(rows, -1, self.group) * self.scale[..., None]
        if self.offset is not None:
            grouped = grouped + self.offset[..., None]
        return grouped.view(rows, size)


def groups_of(module: torch.nn.Module) -> IntGroups | None:
    """The integer groups a Linear was given (packing.attach_groups), if any."""
    found = getattr(module, _ATTRIBUTE, None)
    return found if isinstance(found, IntGroups) else None


def give_groups(module: torch.nn.Module, groups: IntGroups | None) -> None:
    setattr(module, _ATTRIBUTE, groups)


def stacked(parts: list[IntGroups | None]) -> IntGroups | None:
    """Groups of weights concatenated along their outputs (a fused q/k/v, gate/up), or None
    unless every part has them."""
    import torch

    if not parts or any(part is None for part in parts):
        return None
    present = [part for part in parts if part is not None]
    group = min(part.group for part in present)
    same = [part.regrouped(group) for part in present]
    offsets = None
    if any(part.offset is not None for part in same):
        offsets = torch.cat(
            [torch.zeros_like(p.scale) if p.offset is None else p.offset for p in same]
        )
    return IntGroups(
        torch.cat([p.values for p in same]).contiguous(),
        torch.cat([p.scale for p in same]).contiguous(),
        None if offsets is None else offsets.contiguous(),
    )


def from_gguf(blocks: np.ndarray, kind: Any, dequantized: np.ndarray) -> IntGroups | None:
    """`blocks`: a tensor's raw bytes (any shape); `dequantized`: gguf's `dequantize` of them
    ([rows, columns], which the conversion has made already). None for a type that is not such
    groups, or whose groups do not rebuild those values exactly."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Type
    from gguf import quants
    from gguf.constants import GGML_QUANT_SIZES

    rows = int(dequantized.shape[0])
    block_size, type_size = GGML_QUANT_SIZES[kind]
    raw = np.ascontiguousarray(blocks).view(np.uint8).reshape(-1, type_size)
    unit = raw.copy()
    offset = None
    decode: Any
    if kind in (Type.Q8_0, Type.Q5_0):  # d, then the values
        group, scale = block_size, _half(raw[:, 0:2])
        unit[:, 0:2] = _bytes(_ONE)
        decode = quants.Q8_0 if kind == Type.Q8_0 else quants.Q5_0
    elif kind == Type.Q6_K:  # ..., 16 int8 scales, d
        group = 16
        scale = _half(raw[:, -2:])[:, None] * raw[:, -18:-2].view(np.int8).astype(np.float32)
        unit[:, -18:-2] = 1
        unit[:, -2:] = _bytes(_ONE)
        decode = quants.Q6_K
    elif kind == Type.Q4_K:  # d, dmin, 12 bytes of 6-bit scales and mins, the values
        group = 32
        sc, m = quants.Q4_K.get_scale_min(raw[:, 4:16])
        scale = _half(raw[:, 0:2])[:, None] * sc.reshape(len(raw), -1).astype(np.float32)
        offset = -(_half(raw[:, 2:4])[:, None] * m.reshape(len(raw), -1).astype(np.float32))
        unit[:, 0:2], unit[:, 2:4] = _bytes(_ONE), _bytes(_ZERO)
        unit[:, 4:16] = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)
        decode = quants.Q4_K
    else:
        return None
    values = decode.dequantize_blocks(unit).reshape(rows, -1)
    scale = np.asarray(scale, dtype=np.float32).reshape(rows, -1)
    rebuilt = values.reshape(rows, -1, group) * scale[..., None]
    if offset is not None:
        offset = np.asarray(offset, dtype=np.float32).reshape(rows, -1)
        rebuilt = rebuilt + offset[..., None]
    if (
        not np.array_equal(rebuilt, dequantized.reshape(rebuilt.shape))
        or np.abs(values).max() > 127
    ):
        return None
    return IntGroups(
        torch.from_numpy(values.astype(np.int8)),
        torch.from_numpy(scale),
        None if offset is None else torch.from_numpy(offset),
    )


def _half(raw: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32).reshape(len(raw))


def _bytes(half: int) -> np.ndarray:
    import numpy as np

    return np.array([half & 0xFF, half >> 8], dtype=np.uint8)


def to_tensors(groups: dict[str, IntGroups]) -> dict[str, torch.Tensor]:
    """For safetensors: `<weight name>.values`, `.scale` and `.offset`."""
    out: dict[str, torch.Tensor] = {}
    for name, part in groups.items():
        out[f"{name}.values"], out[f"{name}.scale"] = part.values, part.scale
        if part.offset is not None:
            out[f"{name}.offset"] = part.offset
    return out


def from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, IntGroups]:
    suffix = ".values"
    return {
        key[: -len(suffix)]: IntGroups(
            tensors[key],
            tensors[key[: -len(suffix)] + ".scale"],
            tensors.get(key[: -len(suffix)] + ".offset"),
        )
        for key in tensors
        if key.endswith(suffix)
    }
