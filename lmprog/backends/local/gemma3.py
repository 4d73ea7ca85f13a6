"""A lean forward pass for Gemma 3 text models, the family lp.Local serves by default.

transformers' Gemma 3 code spends a single-sequence decode step mostly in Python: ~1,000 small
operations (rotary embeddings recomputed per step, masks built per call, the attention
interface's dispatch), more time than the weights take to read. This pass computes the same
function with fewer, larger operations: one matmul for q/k/v and one for gate/up, q and k
normalised and rotated together, rotary tables computed once, and no mask at all for a
decode step without padding (a sliding-window layer attends to a slice of the cache). The
numbers are transformers' own: its rotary module makes the tables, its activation is used,
and tests/integration/test_local_gemma3.py compares the two passes' hidden states.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

from lmprog.backends.local.groups import give_groups, groups_of, stacked
from lmprog.backends.local.native import DecodeLayer, DecodeMatrices, DecodeNorms, kernels
from lmprog.backends.local.packing import GroupLinear

GEMMA3_TYPES = ("gemma3_text",)


def lean_forward(model: Any) -> Gemma3Forward | None:
    """The lean pass for `model`, or None when it is not a float32 Gemma 3 text model (those
    keep transformers' code)."""
    config = model.config.get_text_config()
    decoder = model.get_decoder()
    if (
        getattr(config, "model_type", None) not in GEMMA3_TYPES
        or getattr(config, "attn_logit_softcapping", None) is not None
        or getattr(config, "use_bidirectional_attention", False)
        or decoder.norm.weight.dtype != torch.float32  # bfloat16 on a GPU: transformers' code
        or not all(isinstance(layer.self_attn.q_proj, torch.nn.Linear) for layer in decoder.layers)
    ):
        return None
    return Gemma3Forward(decoder, config)


class _Layer(torch.nn.Module):
    """One decoder layer's weights, fused where two matmuls read the same input."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        attention, mlp = layer.self_attn, layer.mlp
        self.qkv = _fused(attention.q_proj, attention.k_proj, attention.v_proj)
        self.o = attention.o_proj
        self.gate_up = _fused(mlp.gate_proj, mlp.up_proj)
        self.down = mlp.down_proj
        self.activation = mlp.act_fn
        self.gelu_tanh = getattr(mlp.config, "hidden_activation", None) == "gelu_pytorch_tanh"
        heads = attention.q_proj.out_features // attention.head_dim
        kv_heads = attention.k_proj.out_features // attention.head_dim
        # q and k are normalised in one call: q's weight for each query head, then k's.
        self.qk_norm = torch.cat(
            [
                _scale(attention.q_norm).expand(heads, -1),
                _scale(attention.k_norm).expand(kv_heads, -1),
            ]
        )
        self.input_norm = _scale(layer.input_layernorm)
        self.post_attention_norm = _scale(layer.post_attention_layernorm)
        self.pre_mlp_norm = _scale(layer.pre_feedforward_layernorm)
        self.post_mlp_norm = _scale(layer.post_feedforward_layernorm)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, attention.head_dim
        self.scaling = float(attention.scaling)
        self.layer_type = str(attention.layer_type)
        self.window: int | None = attention.sliding_window if attention.is_sliding else None


class Gemma3Forward(torch.nn.Module):
    """Final hidden states from tokens, positions and a KV cache, as transformers computes
    them. `valid` marks, per row, which cache columns (past and new) hold real tokens; None:
    all of them."""

    def __init__(self, decoder: Any, config: Any) -> None:
        super().__init__()
        self.embed = decoder.embed_tokens
        self.layers: list[_Layer] = [_Layer(layer) for layer in decoder.layers]
        self.registered = torch.nn.ModuleList(self.layers)  # so that packing finds the Linears
        self.norm = _scale(decoder.norm)
        self.eps = float(config.rms_norm_eps)
        self.rotary = decoder.rotary_emb
        self.max_positions = int(config.max_position_embeddings)
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._decode: list[DecodeLayer] | None = None  # built on the first decode step

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[rows, new] tokens and positions -> [rows, new, hidden]; appends to `cache`."""
        hidden = self.embed(tokens)
        rotations = {kind: self._rotation(kind, positions) for kind in self._layer_types()}
        width = int(cache.get_seq_length()) + tokens.shape[1]
        masks = self._masks(tokens.shape[1], width, valid)
        decode = self._decode_layers() if tokens.shape[1] == 1 else None
        if decode is not None and tokens.shape[0] <= GroupLinear.KERNEL_ROWS:
            hidden = hidden.contiguous()  # its own tensor: the decode layers add to it in place
            for index, layer in enumerate(self.layers):
                rotation = rotations[layer.layer_type]
                self._decode_layer(index, layer, decode[index], hidden, rotation, cache, masks)
        else:
            for index, layer in enumerate(self.layers):
                rotation = rotations[layer.layer_type]
                hidden = self._layer(index, layer, hidden, rotation, cache, masks)
        return functional.rms_norm(hidden, self.norm.shape, self.norm, self.eps)

    def _decode_layers(self) -> list[DecodeLayer] | None:
        """The layers' per-token work in lmprog's kernels, where every layer is packed into
        integer groups (packing.py), has no biases and uses Gemma's tanh GELU; else None
        (torch's operations)."""
        if self._decode is None:
            native = kernels()
            decode: list[DecodeLayer] = []
            for layer in self.layers:
                linears = [layer.qkv, layer.o, layer.gate_up, layer.down]
                packed = [linear for linear in linears if isinstance(linear, GroupLinear)]
                if native is None or not layer.gelu_tanh or len(packed) < len(linears):
                    break
                if any(linear.bias is not None for linear in packed):  # kernels.c adds none
                    break
                matrices = DecodeMatrices(*(linear.groups for linear in packed))
                norms = DecodeNorms(
                    layer.input_norm, layer.qk_norm, layer.post_attention_norm,
                    layer.pre_mlp_norm, layer.post_mlp_norm,
                )  # fmt: skip
                shape = (layer.heads, layer.kv_heads, layer.head_dim)
                decode.append(DecodeLayer(native, matrices, norms, shape, self.eps))
            self._decode = decode
        return self._decode if len(self._decode) == len(self.layers) else None

    def _decode_layer(
        self,
        index: int,
        layer: _Layer,
        decode: DecodeLayer,
        hidden: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        masks: dict[int | None, tuple[int, torch.Tensor | None]],
    ) -> None:
        """What _layer computes, for one new token per row, adding it to `hidden` in place."""
        rows, dim, heads, kv_heads = hidden.shape[0], layer.head_dim, layer.heads, layer.kv_heads
        flat = hidden.view(rows, -1)
        cos, sin = (part.reshape(rows, dim).contiguous() for part in rotation)
        qkv = decode.attention_in(flat, cos, sin).unsqueeze(2)  # [rows, all heads, 1, dim]
        keys, values = cache.update(
            qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :], index
        )
        attended = _attend(layer, qkv[:, :heads], keys, values, masks)
        decode.attention_out_mlp(flat, attended.reshape(rows, heads * dim).contiguous())

    def _layer(
        self,
        index: int,
        layer: _Layer,
        hidden: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        masks: dict[int | None, tuple[int, torch.Tensor | None]],
    ) -> torch.Tensor:
        rows, new, _ = hidden.shape
        heads, kv_heads, dim = layer.heads, layer.kv_heads, layer.head_dim
        x = functional.rms_norm(hidden, layer.input_norm.shape, layer.input_norm, self.eps)
        qkv = layer.qkv(x).view(rows, new, heads + 2 * kv_heads, dim)
        qk = (
            functional.rms_norm(qkv[:, :, : heads + kv_heads], (dim,), eps=self.eps) * layer.qk_norm
        )
        qk = qk.transpose(1, 2)  # [rows, heads + kv_heads, new, dim]
        cos, sin = rotation
        half = dim // 2
        qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
        values = qkv[:, :, heads + kv_heads :].transpose(1, 2)
        keys, values = cache.update(qk[:, heads:], values, index)
        attended = _attend(layer, qk[:, :heads], keys, values, masks)
        attended = layer.o(attended.transpose(1, 2).reshape(rows, new, heads * dim))
        norm = layer.post_attention_norm
        hidden = hidden + functional.rms_norm(attended, norm.shape, norm, self.eps)
        x = functional.rms_norm(hidden, layer.pre_mlp_norm.shape, layer.pre_mlp_norm, self.eps)
        gate, up = layer.gate_up(x).chunk(2, dim=-1)
        x = layer.down(layer.activation(gate) * up)
        norm = layer.post_mlp_norm
        return hidden + functional.rms_norm(x, norm.shape, norm, self.eps)

    def _layer_types(self) -> set[str]:
        return {layer.layer_type for layer in self.layers}

    def _masks(
        self, new: int, width: int, valid: torch.Tensor | None
    ) -> dict[int | None, tuple[int, torch.Tensor | None]]:
        """Per window (None: full attention), the first cache column any query attends to and
        the boolean mask over the columns from there (None: every one)."""
        windows = {layer.window for layer in self.layers}
        out: dict[int | None, tuple[int, torch.Tensor | None]] = {}
        device = self.norm.device
        queries = torch.arange(width - new, width, device=device)[:, None]
        columns = torch.arange(width, device=device)[None, :]
        for window in windows:
            start = 0 if window is None else max(0, width - new - window + 1)
            if new == 1 and valid is None:  # the causal mask of one new token: nothing to hide
                out[window] = (start, None)
                continue
            allowed = columns <= queries  # [new, width]
            if window is not None:
                allowed = allowed & (columns > queries - window)
            mask = allowed[None, None] if valid is None else allowed & valid[:, None, None, :]
            out[window] = (start, mask[..., start:])
        return out

    def _rotation(self, kind: str, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for `positions` ([rows, new] -> [rows, 1, new, head_dim]) from a table
        that transformers' rotary module fills, grown by doubling as positions grow."""
        needed = int(positions.max()) + 1
        table = self._tables.get(kind)
        if table is None or table[0].shape[0] < needed:
            grown = 2 * (0 if table is None else table[0].shape[0])
            size = max(needed, min(max(grown, 1024), self.max_positions))
            every = torch.arange(size, device=positions.device)[None]
            probe = self.norm.new_empty(0)
            cos, sin = self.rotary(probe, every, kind)
            table = self._tables[kind] = (cos[0], sin[0])
        cos, sin = table
        return cos[positions][:, None], sin[positions][:, None]


def _attend(
    layer: _Layer,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    masks: dict[int | None, tuple[int, torch.Tensor | None]],
) -> torch.Tensor:
    """Attention over the cache columns the layer's window and the masks leave:
    [rows, heads, new, dim]."""
    start, mask = masks[layer.window]
    return functional.scaled_dot_product_attention(
        queries,
        keys[:, :, start:],
        values[:, :, start:],
        attn_mask=mask,
        scale=layer.scaling,
        enable_gqa=layer.heads != layer.kv_heads,
    )


def _fused(*linears: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear computing every one of `linears` (their outputs side by side), with their
    integer groups stacked where they all have them (packing.attach_groups)."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    biased = linears[0].bias is not None
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=biased, device=weight.device)
    fused.weight = torch.nn.Parameter(weight, requires_grad=False)
    if biased:
        bias = torch.cat([linear.bias.detach() for linear in linears if linear.bias is not None])
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    give_groups(fused, stacked([groups_of(linear) for linear in linears]))
    return fused


def _scale(norm: Any) -> torch.Tensor:
    """Gemma's RMSNorm multiplies by (1 + weight), in float32."""
    weight: torch.Tensor = norm.weight.detach()
    return (1.0 + weight.float()).contiguous()
