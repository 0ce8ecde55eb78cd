"""Swin and Donut-Swin encoders (SwinModel, DonutSwinModel).

Patch embedding (padded to a multiple of the patch) + LayerNorm, stages of pre-norm window
attention with a relative position bias, every second block on windows shifted by half a window,
patch merging between stages. SwinModel ends with a LayerNorm, DonutSwinModel does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecap.errors import UnsupportedModelError

from .registry import activation, layer_norm, linear, register_encoder, to_numpy
from .weights import Attention, SwinBlock, SwinEncoder, SwinStage


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, np.integer)) else (int(value[0]), int(value[1]))


def relative_position_index(window: int) -> np.ndarray:
    """[window^2 * window^2] index into the bias table (Swin's, computed here: transformers 5.x keeps it
    as a non-persistent buffer, which a meta-device load may leave unset)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]).reshape(-1)


def _block_parts(blk: Any) -> dict[str, Any]:
    """A block's modules under either naming: transformers 5.x Swin (`q_proj`..., `mlp.fc1`) or
    4.x Swin / Donut-Swin (`attention.self.query`..., `intermediate.dense`)."""
    att = blk.attention
    if hasattr(att, "q_proj"):
        return {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj, "o": att.o_proj,
                "bias_table": att.relative_position_bias.relative_position_bias_table,
                "fc1": blk.mlp.fc1, "fc2": blk.mlp.fc2}
    inner = att.self
    return {"q": inner.query, "k": inner.key, "v": inner.value, "o": att.output.dense,
            "bias_table": inner.relative_position_bias_table, "fc1": blk.intermediate.dense, "fc2": blk.output.dense}


def _block(blk: Any, cfg: Any, dim: int, heads: int, grid: tuple[int, int], where: str) -> SwinBlock:
    window = int(cfg.window_size)
    shift = int(blk.shift_size)
    if min(grid) <= window and not getattr(cfg, "always_partition", False):
        # transformers' set_shift_and_window_size: one window covers the whole (small) grid
        shift = 0
        if min(grid) != window:
            raise UnsupportedModelError(
                f"{where}: a {grid[0]}x{grid[1]} token grid is smaller than window_size {window} "
                "(transformers itself cannot run this geometry)"
            )
    n = window * window
    parts = _block_parts(blk)
    table = to_numpy(parts["bias_table"])  # [(2w-1)^2, heads]
    rel_bias = np.ascontiguousarray(table[relative_position_index(window)].reshape(n, n, heads).transpose(2, 0, 1))
    scale = (dim // heads) ** -0.5
    return SwinBlock(
        ln_attn=layer_norm(blk.layernorm_before),
        attn=Attention(linear(parts["q"], scale), linear(parts["k"]), linear(parts["v"]), linear(parts["o"])),
        rel_bias=rel_bias,
        ln_mlp=layer_norm(blk.layernorm_after),
        fc1=linear(parts["fc1"]),
        fc2=linear(parts["fc2"]),
        act=activation(cfg.hidden_act, cfg.model_type),
        window=window,
        shift=shift,
    )


@register_encoder("swin", "donut-swin")
def swin_encoder(module: Any) -> SwinEncoder:
    cfg = module.config
    emb = module.embeddings
    patch = _pair(cfg.patch_size)
    if patch[0] != patch[1]:
        raise UnsupportedModelError(f"{cfg.model_type}: non-square patches {patch}")
    image_hw = _pair(cfg.image_size)
    grid = (-(-image_hw[0] // patch[0]), -(-image_hw[1] // patch[1]))
    stages = []
    for si, stage in enumerate(module.encoder.layers):
        dim, heads = int(cfg.embed_dim) * 2**si, int(cfg.num_heads[si])
        blocks = [_block(b, cfg, dim, heads, grid, f"{cfg.model_type} stage {si} block {bi}")
                  for bi, b in enumerate(stage.blocks)]
        merge = getattr(stage, "downsample", None)
        stages.append(SwinStage(grid, heads, blocks, layer_norm(merge.norm) if merge is not None else None,
                                linear(merge.reduction) if merge is not None else None))
        if merge is not None:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    pos = getattr(emb, "position_embeddings", None)
    final = getattr(module, "layernorm", None)
    conv = emb.patch_embeddings.projection
    return SwinEncoder(
        patch_w=to_numpy(conv.weight),
        patch_b=to_numpy(conv.bias),
        patch_ln=layer_norm(emb.norm),
        pos_emb=to_numpy(pos)[0] if pos is not None else None,
        stages=stages,
        final_ln=layer_norm(final) if final is not None else None,
        image_hw=image_hw,
        patch=patch[0],
        channels=int(cfg.num_channels),
        to_decoder=None,
    )
