"""lp.Local's own kernels (native.py, kernels.c) and the integer groups they read (groups.py),
each against the plain torch computation it replaces."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Type
from gguf import quants

from lmprog.backends.local import native
from lmprog.backends.local.groups import IntGroups, from_gguf, from_tensors, stacked, to_tensors
from lmprog.backends.local.packing import Float16Linear, GroupLinear, can_pack
from lmprog.backends.local.weights import _GgufFile
from lmprog.models import gemma3_270m_gguf

KERNELS = native.kernels()
needs_kernels = pytest.mark.skipif(
    KERNELS is None, reason="lmprog's kernels cannot be built here (no AVX2 or no C compiler)"
)


def _groups(rows: int, size: int, group: int, offset: bool) -> IntGroups:
    values = torch.randint(-32, 32, (rows, size), dtype=torch.int8)
    scale = torch.rand(rows, size // group) / 10
    shift = torch.randn(rows, size // group) / 10 if offset else None
    return IntGroups(values, scale, shift)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize(("group", "offset"), [(32, False), (16, False), (32, True)])
def test_the_group_kernel_multiplies_as_torch_does(rows: int, group: int, offset: bool) -> None:
    assert KERNELS is not None
    weights = _groups(96, 256, group, offset)
    x = torch.randn(rows, 256)
    got = KERNELS.gemv_i8(weights.values, weights.scale, weights.offset, x)
    want = x @ weights.dequantized().T
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_a_product_split_across_the_kernels_threads_is_the_same(threads: int) -> None:
    """The kernels' own pool splits a product's outputs across torch's thread count (and
    grows when the count does); every split gives the one-thread result, bit for bit."""
    assert KERNELS is not None
    weights = _groups(2048, 640, 32, True)
    packed = torch.randint(0, 256, (4096, 320), dtype=torch.uint8)
    scale = torch.rand(4096, 10)
    x = torch.randn(3, 640)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = KERNELS.gemv_i8(weights.values, weights.scale, weights.offset, x)
        scan_alone = KERNELS.scan_q4(packed, scale, x)
        torch.set_num_threads(threads)
        for attempt in range(20):  # dispatches in a row, some after the workers went to sleep
            if attempt % 5 == 0:
                time.sleep(0.02)
            assert torch.equal(
                KERNELS.gemv_i8(weights.values, weights.scale, weights.offset, x), alone
            )
            assert torch.equal(KERNELS.scan_q4(packed, scale, x), scan_alone)
    finally:
        torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 4, 6])
def test_the_head_scan_is_the_4_bit_product_of_int8_rows(rows: int) -> None:
    """lmk_scan_q4 computes exactly (to float rounding) the product of its 4-bit weights and
    each row rounded to int8 with one scale; that rounding is all it approximates."""
    assert KERNELS is not None
    size, count = 640, 500
    levels = torch.randint(0, 16, (count, size // 64, 64), dtype=torch.uint8)
    packed = (levels[..., :32] | (levels[..., 32:] << 4)).reshape(count, size // 2).contiguous()
    scale = torch.rand(count, size // 64)
    x = torch.randn(rows, size) * 20
    weights = ((levels.float() - 8) * scale[..., None]).reshape(count, size)
    step = x.abs().amax(dim=1, keepdim=True) / 127
    rounded = torch.round(x / step) * step
    got = KERNELS.scan_q4(packed, scale, x)
    assert torch.allclose(got, rounded @ weights.T, rtol=1e-4, atol=1e-2)
    assert not torch.allclose(got, x @ weights.T, rtol=1e-4, atol=1e-2)


def test_without_avx2_or_a_compiler_there_are_no_kernels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """lp.Local then keeps torch's kernels; why is logged, never raised."""
    monkeypatch.setenv("LMPROG_CACHE_DIR", str(tmp_path))
    native.kernels.cache_clear()
    try:
        monkeypatch.setenv("LMPROG_NATIVE", "0")
        assert native.kernels() is None
        native.kernels.cache_clear()
        monkeypatch.delenv("LMPROG_NATIVE")
        monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
        monkeypatch.setattr(native.shutil, "which", lambda name: "/bin/false")
        with caplog.at_level(logging.INFO, logger=native.__name__):
            if native._unusable_here() is None:
                assert native.kernels() is None
                assert "building them failed" in caplog.text
        assert not list(tmp_path.rglob("*.so"))
    finally:
        native.kernels.cache_clear()


# ----- integer groups from a GGUF ------------------------------------------------------------


def _gguf_tensor(kind: Type) -> tuple[np.ndarray, tuple[int, ...]]:
    gguf = _GgufFile.read(gemma3_270m_gguf())
    tensor = next(t for t in gguf.tensors if t.ggml_type == kind and t.name.startswith("blk."))
    return gguf.data(tensor), tensor.shape


@pytest.mark.parametrize("kind", [Type.Q8_0, Type.Q5_0, Type.Q4_K, Type.Q6_K])
def test_gguf_blocks_are_integer_groups_of_the_same_values(kind: Type) -> None:
    """The default model's own tensors, one of each type it has: bit for bit."""
    blocks, shape = _gguf_tensor(kind)
    exact = quants.dequantize(blocks, kind).reshape(shape)
    groups = from_gguf(blocks, kind, exact)
    assert groups is not None
    want = torch.from_numpy(exact)
    assert torch.equal(groups.dequantized(), want)
    assert groups.group == (16 if kind == Type.Q6_K else 32)
    assert (groups.offset is not None) == (kind == Type.Q4_K)


def test_a_type_that_is_not_groups_is_left_alone() -> None:
    blocks = quants.quantize(np.random.default_rng(0).standard_normal((4, 64)), Type.F16)
    assert from_gguf(blocks, Type.F16, quants.dequantize(blocks, Type.F16)) is None


def test_stacked_groups_hold_each_parts_weights() -> None:
    """A fused q/k/v or gate/up: groups of 32 and 16, with and without offsets."""
    parts = [_groups(8, 64, 32, False), _groups(4, 64, 16, False), _groups(6, 64, 32, True)]
    fused = stacked(list(parts))
    assert fused is not None and fused.group == 16
    assert torch.equal(fused.dequantized(), torch.cat([p.dequantized() for p in parts]))
    assert stacked([parts[0], None]) is None
    again = from_tensors(to_tensors({"w": fused}))["w"]
    assert torch.equal(again.dequantized(), fused.dequantized())


@needs_kernels
@pytest.mark.skipif(not can_pack(torch.device("cpu")), reason="no fbgemm")
def test_a_group_linear_runs_decode_rows_in_the_kernel_and_prefill_in_fbgemm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert KERNELS is not None
    groups = _groups(48, 128, 32, True)
    linear = torch.nn.Linear(128, 48, bias=True)
    linear.weight.data = groups.dequantized()
    layer = GroupLinear(linear, groups, KERNELS)
    calls: list[int] = []
    monkeypatch.setattr(
        Float16Linear, "forward", lambda self, x: calls.append(x.shape[1]) or linear(x)
    )
    with torch.inference_mode():
        for rows in (1, GroupLinear.KERNEL_ROWS, GroupLinear.KERNEL_ROWS + 1):
            x = torch.randn(1, rows, 128)
            assert torch.allclose(layer(x), linear(x), rtol=1e-4, atol=1e-4)
    assert calls == [GroupLinear.KERNEL_ROWS + 1]
