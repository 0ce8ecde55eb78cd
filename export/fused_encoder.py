"""The encoder graph with ONNX Runtime's fused operators, one image per run (issue 20).

Its input is pixel_values [1, 3, H, W]: the runtime runs it once per image. That makes every
operator batch-invariant by construction (an image alone is always the same tensor), including int8
as ONNX Runtime's fused `DynamicQuantizeMatMul` (one kernel per projection, one activation scale for
the tensor: here, for one image) instead of the plain graph's per-row quantization (about ten kernels
per projection, each a pass over 197 x 3,072 activations in ViT-base). ViT/DeiT layers are
MultiHeadAttention + BiasGelu around their LayerNorms (document-sized inputs keep per-token int8
scales, PER_IMAGE_INT8_MAX_TOKENS); Swin and Donut-Swin blocks keep their window
attention and fuse the MLP's bias and activation. The outputs are every
decoder layer's cross K/V as the fused decoder step takes them: [1, heads, S, head_dim], keys too.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecap import manifest as mf

from .graphbuilder import CONTRIB, GraphBuilder, mlp_activation, packed_bias, residual, skip_norm
from .graphs import vit_embeddings
from .swin_graph import swin_tokens
from .weights import Decoder, Encoder, Linear, SwinEncoder


def _vit_fused(g: GraphBuilder, enc: Encoder, px: str) -> str:
    heads = enc.num_heads
    x = vit_embeddings(g, enc, px)
    pending = None
    for i, layer in enumerate(enc.layers):
        p = f"enc.{i}"
        if pending is None:
            h = g.layer_norm(x, layer.ln_attn, f"{p}.ln1")
        else:
            h, x = skip_norm(g, pending[0], x, pending[1], layer.ln_attn, f"{p}.ln1")
        att = layer.attn
        # q/k/v biases go into MultiHeadAttention, which takes them for exactly this
        projections = (att.q, att.k, att.v)
        inputs = g.linears(h, [Linear(lin.w, None) for lin in projections], f"{p}.attn.qkv")
        bias = packed_bias(projections)
        if bias is not None:
            inputs.append(g.weight(f"{p}.attn.qkv.bias", bias.astype(np.float32)))
        ctx = g.op("MultiHeadAttention", inputs, domain=CONTRIB, num_heads=heads, scale=1.0)  # q carries 1/sqrt(d)
        a = g.linear(ctx, att.o, f"{p}.attn.o", with_bias=False)
        h, x = skip_norm(g, a, x, att.o.b, layer.ln_mlp, f"{p}.ln2")
        m = mlp_activation(g, h, layer.fc1, layer.act, f"{p}.fc1")
        pending = (g.linear(m, layer.fc2, f"{p}.fc2", with_bias=False), layer.fc2.b)
    if enc.final_ln is not None:
        x, _ = skip_norm(g, pending[0], x, pending[1], enc.final_ln, "enc.ln_f")
    else:
        x = residual(g, pending[0], x, pending[1], "enc.out")
    return x


# Up to this many tokens per image, int8 products take one activation scale per image (ONNX Runtime's
# fused DynamicQuantizeMatMul); beyond, one per token, as the plain graphs do. A scale per image
# is as good as one per token at ViT sizes (the demo model's int8 agreed with fp32 on 699 of 699
# decisive steps either way), but over a document page's tens of thousands of tokens it is coarse:
# a Donut-shaped model at 640x480 (19,200 tokens in its first stage) kept 79.5 % of fp32's decisive
# tokens with it and 85.4 % with per-token scales, its decoder in fp32 (bench/RESULTS.md).
PER_IMAGE_INT8_MAX_TOKENS = 1024


def encoder_int8_form(tokens: int) -> str:
    return "per-image" if tokens <= PER_IMAGE_INT8_MAX_TOKENS else "per-row-fused"


def build_fused_encoder(enc: Encoder | SwinEncoder, dec: Decoder, precision: str = "fp32") -> tuple[onnx.ModelProto, list, list]:
    """The fused encoder (fp32 or int8), one image per run, emitting the cross K/V the fused step reads."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"fused encoders are built in fp32 and int8, not {precision!r}")
    tokens = enc.seq_len if isinstance(enc, Encoder) else enc.stages[0].grid[0] * enc.stages[0].grid[1]
    g = GraphBuilder("edgecap_encoder_fused", precision, int8_form=encoder_int8_form(tokens), fused=True)
    h_img, w_img = enc.image_hw
    px = g.input(mf.PIXEL_VALUES, "float32", [1, enc.channels, h_img, w_img])
    x = swin_tokens(g, enc, px) if isinstance(enc, SwinEncoder) else _vit_fused(g, enc, px)
    if enc.to_decoder is not None:
        x = g.linear(x, enc.to_decoder, "enc_to_dec")
    seq = enc.seq_len
    kvs = g.linears(x, [m for layer in dec.layers for m in (layer.cross_attn.k, layer.cross_attn.v)], "dec.cross.kv")
    for i in range(len(dec.layers)):
        g.output(g.heads(kvs[2 * i], dec.num_heads, dec.head_dim), mf.cross_key(i), "float32",
                 [1, dec.num_heads, seq, dec.head_dim])
        g.output(g.heads(kvs[2 * i + 1], dec.num_heads, dec.head_dim), mf.cross_value(i), "float32",
                 [1, dec.num_heads, seq, dec.head_dim])
    return g.build(), g.specs_in, g.specs_out
