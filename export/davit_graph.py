"""Florence-2's encoder as graph nodes: pixels + prompt ids -> BART encoder states [B, S, d] (fp32).

DaViT stages (a strided patch convolution with a LayerNorm before or after it, then blocks of a
window-attention half and a channel-attention half, each opened by a depthwise 3x3 convolution
added to its input), then the projector (2-D learned and 1-D cosine position embeddings, a
mean-pooled token before the grid's tokens, a projection and a LayerNorm). The image's tokens go
first, the prompt's embedded tokens after them (where Florence2Processor puts its `<image>`
placeholders and the question), and the BART encoder (learned positions, post-norm layers) reads
the whole sequence. The image size is fixed per bundle, so every window partition and padding is
constant-shaped; only the batch and the prompt's length vary. Mirrors transformers'
`Florence2VisionBackbone` / `Florence2MultiModalProjector` op for op (window padding at the right
and bottom after the LayerNorm, the channel attention's head layout).
"""

from __future__ import annotations

import numpy as np

from edgecap import manifest as mf

from .graphbuilder import GraphBuilder, mlp_residual, self_attention, softmax
from .swin_graph import partition_windows, unpartition_windows
from .weights import Conv, DavitBlock, Florence2Encoder


def _conv(g: GraphBuilder, x: str, conv: Conv, name: str) -> str:
    """Conv2d on NCHW (fp32 in and out; the product in the compute dtype)."""
    inputs = [g.to_compute(x), g.param(f"{name}.weight", conv.w)]
    if conv.b is not None:
        inputs.append(g.param(f"{name}.bias", conv.b))
    k = int(conv.w.shape[-1])
    p = conv.padding
    return g.to_float(g.op("Conv", inputs, kernel_shape=[k, k], strides=[conv.stride] * 2, pads=[p] * 4,
                           group=conv.groups))


def _tokens(g: GraphBuilder, x: str, hw: tuple[int, int], c: int) -> str:
    """NCHW -> [B, H*W, C]."""
    return g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 3, 1]), g.const([-1, hw[0] * hw[1], c])])


def _image(g: GraphBuilder, t: str, hw: tuple[int, int], c: int) -> str:
    """[B, H*W, C] -> NCHW."""
    return g.op("Transpose", [g.op("Reshape", [t, g.const([-1, hw[0], hw[1], c])])], perm=[0, 3, 1, 2])


def _window_attention(g: GraphBuilder, t: str, blk: DavitBlock, hw: tuple[int, int], c: int, p: str) -> str:
    h, w = hw
    ws = blk.window
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    x = g.op("Reshape", [t, g.const([-1, h, w, c])])
    if (hp, wp) != (h, w):  # zeros at the right and bottom, after the LayerNorm
        x = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, hp - h, wp - w, 0])])
    windows = partition_windows(g, x, hp, wp, ws, c)
    a = self_attention(g, windows, blk.attn, blk.heads, c // blk.heads, c, f"{p}.attn")
    x = unpartition_windows(g, a, hp, wp, ws, c)
    if (hp, wp) != (h, w):
        x = g.op("Slice", [x, g.const([0, 0]), g.const([h, w]), g.const([1, 2])])
    return g.op("Reshape", [x, g.const([-1, h * w, c])])


def _channel_attention(g: GraphBuilder, t: str, blk: DavitBlock, c: int, p: str) -> str:
    """Attention between the channels of each group, over all tokens: per group, a [d, d] score
    matrix from q [d, N] and k [N, d] (q carries the 1/sqrt(N) scaling)."""
    groups = blk.heads
    d = c // groups
    q, k, v = (g.op("Reshape", [y, g.const([0, 0, groups, d])])  # [B, N, G, d]
               for y in g.linears(t, [blk.attn.q, blk.attn.k, blk.attn.v], f"{p}.qkv"))
    q = g.op("Transpose", [q], perm=[0, 2, 3, 1])  # [B, G, d, N]
    k = g.op("Transpose", [k], perm=[0, 2, 1, 3])  # [B, G, N, d]
    v = g.op("Transpose", [v], perm=[0, 2, 3, 1])  # [B, G, d, N]
    ctx = g.op("MatMul", [softmax(g, g.op("MatMul", [q, k])), v])  # [B, G, d, N]
    ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 3, 1, 2]), g.const([0, 0, c])])  # [B, N, G*d]
    return g.to_float(g.linear(ctx, blk.attn.o, f"{p}.o"))


def _half(g: GraphBuilder, x: str, blk: DavitBlock, hw: tuple[int, int], c: int, p: str) -> str:
    """One spatial or channel block on NCHW x: conv + residual, attention, conv + residual, MLP."""
    x = g.op("Add", [_conv(g, x, blk.conv1, f"{p}.conv1"), x])
    t = _tokens(g, x, hw, c)
    normed = g.layer_norm(t, blk.ln_attn, f"{p}.ln1")
    if blk.kind == "window":
        a = _window_attention(g, normed, blk, hw, c, p)
    else:
        a = _channel_attention(g, normed, blk, c, p)
    x = _image(g, g.op("Add", [t, a]), hw, c)
    x = g.op("Add", [_conv(g, x, blk.conv2, f"{p}.conv2"), x])
    return _image(g, mlp_residual(g, _tokens(g, x, hw, c), blk, p), hw, c)


def _channel_norm(g: GraphBuilder, x: str, ln, hw: tuple[int, int], c: int, p: str) -> str:
    """LayerNorm over the channels of NCHW x."""
    return _image(g, g.layer_norm(_tokens(g, x, hw, c), ln, p), hw, c)


def image_tokens(g: GraphBuilder, enc: Florence2Encoder, px: str) -> str:
    """DaViT + projector: pixels [B, 3, H, W] -> the image's tokens [B, 1 + rows*cols, d_model] (fp32)."""
    x, hw, c = px, enc.image_hw, enc.channels
    for si, stage in enumerate(enc.stages):
        p = f"davit.{si}"
        if stage.embed_pre_norm:
            x = _channel_norm(g, x, stage.embed_ln, hw, c, f"{p}.embed_ln")
        x = _conv(g, x, stage.embed, f"{p}.embed")
        hw, c = stage.grid, int(stage.embed.w.shape[0])
        if not stage.embed_pre_norm:
            x = _channel_norm(g, x, stage.embed_ln, hw, c, f"{p}.embed_ln")
        for bi, blk in enumerate(stage.blocks):
            x = _half(g, x, blk, hw, c, f"{p}.{bi}")
    t = g.op("Add", [_tokens(g, x, hw, c), g.weight("image_pos", enc.image_pos[None].astype(np.float32))])
    # The spatial mean, first in the sequence: a product with a constant row of 1/N, not ReduceMean,
    # whose ONNX Runtime kernel sums in another order at batch 1 than at batch 8 (an image's tokens
    # would then depend on its batch: tests/test_invariance.py). Each image's row is its own M=1 product.
    tokens = hw[0] * hw[1]
    pooled = g.op("MatMul", [g.const(np.full((1, tokens), 1.0 / tokens), np.float32), t])  # [B, 1, C]
    t = g.op("Concat", [pooled, t], axis=1)
    return g.layer_norm(g.to_float(g.linear(t, enc.projection, "projector")), enc.proj_ln, "projector.ln")


def florence2_states(g: GraphBuilder, enc: Florence2Encoder, px: str) -> str:
    """Pixels and the prompt_ids input -> the BART encoder's output [B, image + prompt tokens, d] (fp32)."""
    ids = g.input(mf.ENCODER_PROMPT_IDS, "int64", ["batch", "prompt_len"])
    text = g.to_float(g.op("Gather", [g.param("token_emb", enc.token_emb), ids], axis=0))  # [B, P, d]
    x = g.op("Concat", [image_tokens(g, enc, px), text], axis=1)
    seq = g.op("Gather", [g.op("Shape", [x]), g.const([1])], axis=0)  # [1]
    start = g.const([enc.pos_offset])
    pos = g.op("Slice", [g.weight("enc_pos_table", enc.pos_table.astype(np.float32)), start,
                         g.op("Add", [seq, start]), g.const([0])])  # rows offset .. offset + S
    x = g.layer_norm(g.op("Add", [x, pos]), enc.emb_ln, "enc.emb_ln")
    d, heads = enc.hidden, enc.num_heads
    for i, layer in enumerate(enc.layers):  # post-norm, as BartEncoderLayer
        p = f"enc.{i}"
        x = g.layer_norm(g.op("Add", [x, self_attention(g, x, layer.attn, heads, d // heads, d, f"{p}.attn")]),
                         layer.ln_attn, f"{p}.ln1")
        h = g.activation(g.linear(x, layer.fc1, f"{p}.fc1"), layer.act)
        x = g.layer_norm(g.op("Add", [x, g.to_float(g.linear(h, layer.fc2, f"{p}.fc2"))]), layer.ln_mlp, f"{p}.ln2")
    return x
