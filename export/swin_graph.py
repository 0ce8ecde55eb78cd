"""The Swin / Donut-Swin encoder as graph nodes: pixels -> [B, tokens, hidden] (fp32).

Shapes are fixed per bundle except the batch, so every reshape, pad, roll and window partition
is a constant-shaped Reshape/Transpose/Slice/Pad, and the shifted windows' attention mask is
built from a small [windows, tokens] table of region ids (ONNX Runtime folds it at load: the
full [windows, tokens, tokens] mask of Donut's first stage would add ~120 MB to the bundle).
Mirrors transformers' SwinLayer / SwinPatchMerging op for op (same padding, roll directions,
-100 mask value, bias-then-mask order).
"""

from __future__ import annotations

import numpy as np

from .graphbuilder import GraphBuilder, mlp_activation, mlp_residual, skip_norm, softmax
from .weights import SwinBlock, SwinEncoder


def _roll(g: GraphBuilder, x: str, shift: int, sizes: tuple[int, int]) -> str:
    """torch.roll(x, shifts=(shift, shift), dims=(1, 2)) for x [B, H, W, C]."""
    for axis, n in zip((1, 2), sizes):
        s = shift % n
        if s == 0:
            continue
        head = g.op("Slice", [x, g.const([n - s]), g.const([n]), g.const([axis])])
        tail = g.op("Slice", [x, g.const([0]), g.const([n - s]), g.const([axis])])
        x = g.op("Concat", [head, tail], axis=axis)
    return x


def partition_windows(g: GraphBuilder, x: str, hp: int, wp: int, ws: int, c: int) -> str:
    """[B, hp, wp, C] -> [B * windows, ws*ws, C] (transformers' window_partition)."""
    r = g.op("Reshape", [x, g.const([-1, hp // ws, ws, wp // ws, ws, c])])
    t = g.op("Transpose", [r], perm=[0, 1, 3, 2, 4, 5])
    return g.op("Reshape", [t, g.const([-1, ws * ws, c])])


def unpartition_windows(g: GraphBuilder, x: str, hp: int, wp: int, ws: int, c: int) -> str:
    r = g.op("Reshape", [x, g.const([-1, hp // ws, wp // ws, ws, ws, c])])
    t = g.op("Transpose", [r], perm=[0, 1, 3, 2, 4, 5])
    return g.op("Reshape", [t, g.const([-1, hp, wp, c])])


def region_ids(hp: int, wp: int, ws: int, shift: int) -> np.ndarray:
    """[windows, ws*ws] region of each token of each (shifted) window, as transformers numbers them."""
    img = np.zeros((hp, wp), np.float32)
    count = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = count
            count += 1
    windows = img.reshape(hp // ws, ws, wp // ws, ws).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(windows.reshape(-1, ws * ws))


def _shift_mask(g: GraphBuilder, hp: int, wp: int, ws: int, shift: int, cache: dict) -> str:
    """[windows, 1, N, N]: 0 within a region, -100 across regions."""
    key = (hp, wp, ws, shift)
    if key not in cache:
        ids = region_ids(hp, wp, ws, shift)
        a = g.weight(g.fresh("swin_regions"), ids[:, None, :])  # [nW, 1, N]: token j
        b = g.op("Transpose", [a], perm=[0, 2, 1])  # [nW, N, 1]: token i
        same = g.op("Equal", [g.op("Sub", [a, b]), g.const(0.0, np.float32)])
        mask = g.op("Where", [same, g.const(0.0, np.float32), g.const(-100.0, np.float32)])
        cache[key] = g.op("Unsqueeze", [mask, g.const([1])])
    return cache[key]


def _block(g: GraphBuilder, x: str, blk: SwinBlock, grid: tuple[int, int], heads: int, p: str, masks: dict) -> str:
    h, w = grid
    c = int(blk.attn.q.w.shape[0])
    ws, shift = blk.window, blk.shift
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    t = g.op("Reshape", [g.layer_norm(x, blk.ln_attn, f"{p}.ln1"), g.const([-1, h, w, c])])
    if (hp, wp) != (h, w):  # pad right and bottom with zeros, after the LayerNorm
        t = g.op("Pad", [t, g.const([0, 0, 0, 0, 0, hp - h, wp - w, 0])])
    if shift:
        t = _roll(g, t, -shift, (hp, wp))
    windows = partition_windows(g, t, hp, wp, ws, c)  # [B*nW, N, C]
    head_dim = c // heads
    q, k, v = g.linears(windows, [blk.attn.q, blk.attn.k, blk.attn.v], f"{p}.qkv")
    q, k, v = g.heads(q, heads, head_dim), g.heads(k, heads, head_dim, transpose_key=True), g.heads(v, heads, head_dim)
    n = ws * ws
    scores = g.op("Add", [g.to_float(g.op("MatMul", [q, k])), g.weight(f"{p}.rel_bias", blk.rel_bias.astype(np.float32))])
    if shift:
        nw = (hp // ws) * (wp // ws)
        s5 = g.op("Reshape", [scores, g.const([-1, nw, heads, n, n])])
        s5 = g.op("Add", [s5, _shift_mask(g, hp, wp, ws, shift, masks)])
        scores = g.op("Reshape", [s5, g.const([-1, heads, n, n])])
    ctx = g.merge_heads(g.op("MatMul", [softmax(g, scores), v]), c)
    a = g.to_float(g.linear(ctx, blk.attn.o, f"{p}.o"))
    t = unpartition_windows(g, a, hp, wp, ws, c)
    if shift:
        t = _roll(g, t, shift, (hp, wp))
    if (hp, wp) != (h, w):
        t = g.op("Slice", [t, g.const([0, 0]), g.const([h, w]), g.const([1, 2])])
    a = g.op("Reshape", [t, g.const([-1, h * w, c])])
    if not g.fused:
        return mlp_residual(g, g.op("Add", [x, a]), blk, p)
    # the fc1 bias inside the activation's kernel (BiasGelu/FastGelu)
    h, x = skip_norm(g, a, x, None, blk.ln_mlp, f"{p}.ln2")
    return g.op("Add", [x, g.to_float(g.linear(mlp_activation(g, h, blk.fc1, blk.act, f"{p}.fc1"), blk.fc2, f"{p}.fc2"))])


def _merge(g: GraphBuilder, x: str, grid: tuple[int, int], c: int, stage, p: str) -> str:
    """SwinPatchMerging: 2x2 neighbours concatenated (x0, x1, x2, x3 order), LayerNorm, Linear."""
    h, w = grid
    t = g.op("Reshape", [x, g.const([-1, h, w, c])])
    if h % 2 or w % 2:
        t = g.op("Pad", [t, g.const([0, 0, 0, 0, 0, h % 2, w % 2, 0])])
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    r = g.op("Reshape", [t, g.const([-1, h2, 2, w2, 2, c])])  # [B, h2, row parity, w2, col parity, C]
    t = g.op("Transpose", [r], perm=[0, 1, 3, 4, 2, 5])  # column parity before row parity: x0 x1 x2 x3
    t = g.op("Reshape", [t, g.const([-1, h2 * w2, 4 * c])])
    return g.to_float(g.linear(g.layer_norm(t, stage.merge_ln, f"{p}.merge_ln"), stage.merge, f"{p}.merge"))


def swin_tokens(g: GraphBuilder, enc: SwinEncoder, px: str) -> str:
    h_img, w_img = enc.image_hw
    pad_h, pad_w = (-h_img) % enc.patch, (-w_img) % enc.patch
    x = g.to_compute(px)
    if pad_h or pad_w:
        x = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, 0, pad_h, pad_w])])
    embed = int(enc.patch_w.shape[0])
    conv = g.op(
        "Conv",
        [x, g.param("patch.weight", enc.patch_w), g.param("patch.bias", enc.patch_b)],
        kernel_shape=[enc.patch, enc.patch],
        strides=[enc.patch, enc.patch],
    )
    x = g.op("Transpose", [g.op("Reshape", [g.to_float(conv), g.const([0, embed, -1])])], perm=[0, 2, 1])
    x = g.layer_norm(x, enc.patch_ln, "patch.ln")
    if enc.pos_emb is not None:
        x = g.op("Add", [x, g.weight("pos_emb", enc.pos_emb[None].astype(np.float32))])
    masks: dict = {}
    c = embed
    for si, stage in enumerate(enc.stages):
        for bi, blk in enumerate(stage.blocks):
            x = _block(g, x, blk, stage.grid, stage.num_heads, f"enc.{si}.{bi}", masks)
        if stage.merge is not None:
            x = _merge(g, x, stage.grid, c, stage, f"enc.{si}")
            c *= 2
    if enc.final_ln is not None:
        x = g.layer_norm(x, enc.final_ln, "enc.ln_f")
    return x
