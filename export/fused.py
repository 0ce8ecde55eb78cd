"""The decoder step with ONNX Runtime's fused operators (issue 20; DESIGN.md §11).

The plain step (graphs.py) is ~100 kernels per layer once int8 quantizes per row; most are small
(masking, concatenation, residual adds, LayerNorm, scale products). Here a layer is:

  Add + LayerNormalization residual add (the previous projection's bias folded in) and LayerNorm; ONNX
                           Runtime's SkipLayerNormalization measured slower on its CPU provider (skip_norm)
  GroupQueryAttention      self-attention over the KV cache in one kernel, the new key/value written
                           in place into the cache at `step` (past and present share one buffer, so
                           nothing is copied per step and the runtime writes no cache slot itself)
  MultiHeadAttention       cross-attention of an image's beams (as a sequence) over its K/V, [images,
                           heads, S, head_dim] as the encoder projected them, shared by the beams
  BiasGelu / FastGelu      the MLP's bias and activation (exact erf GELU / tanh GELU)

and the projections (int8: per-row quantization + MatMulIntegerToFloat + the row scale). Every row's
result is independent of the other rows (tests/test_invariance.py); cross-attention treats an image's
beams as one sequence, so a beam's logits may differ in the last bits between beam counts, never
between batches. TensorRT takes no contrib operator: the plain graphs stay for it (docs/gpu.md).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecap import manifest as mf

from .graphbuilder import CONTRIB, GraphBuilder, mlp_activation, residual, skip_norm
from .graphs import decoder_embeddings
from .weights import Decoder

def _add_norm(g: GraphBuilder, pre_norm: bool, a: str, x: str, bias, this_ln: tuple, next_ln: tuple) -> tuple[str, str]:
    """After a sub-layer's output `a` (its bias not yet added): (the next sub-layer's input, the residual
    stream). Post-norm (BART, TrOCR, BERT) normalises the sum with this sub-layer's LayerNorm, which is
    both; pre-norm (GPT-2, mBART) keeps the sum and normalises it with the next sub-layer's LayerNorm."""
    if pre_norm:
        return skip_norm(g, a, x, bias, *next_ln)
    x, _ = skip_norm(g, a, x, bias, *this_ln)
    return x, x


def build_fused_decoder_step(dec: Decoder, enc_seq: int | str, precision: str = "fp32", attentions: bool = False,
                             fp32_parts: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, list, list]:
    """The fused decoder step (fp32 or int8); `attentions` adds cross_attention.i outputs as the plain
    variant does (their probabilities computed apart, so the step's own kernels are untouched);
    `fp32_parts` as in graphs.build_decoder_step."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"fused decoder steps are built in fp32 and int8, not {precision!r}")
    g = GraphBuilder("edgecap_decoder_step_fused", precision, int8_form="per-row-fused", fp32_parts=fp32_parts,
                     fused=True)
    heads, head_dim, hidden = dec.num_heads, dec.head_dim, dec.hidden
    ids = g.input(mf.INPUT_IDS, "int64", ["batch", 1])
    step = g.input(mf.STEP, "int64", [1])
    pasts = [(g.input(mf.past_key(i), "float32", ["batch", heads, "cache_len", head_dim]),
              g.input(mf.past_value(i), "float32", ["batch", heads, "cache_len", head_dim])) for i in range(len(dec.layers))]
    crosses = [(g.input(mf.cross_key(i), "float32", ["images", heads, enc_seq, head_dim]),
                g.input(mf.cross_value(i), "float32", ["images", heads, enc_seq, head_dim]))
               for i in range(len(dec.layers))]
    x, flat_ids = decoder_embeddings(g, dec, ids, step)

    # GroupQueryAttention's bookkeeping, once per step: every row has `step` tokens in its cache before
    # this one (seqlens_k = total - 1), and the total is step + 1
    step32 = g.op("Cast", [step], to=onnx.TensorProto.INT32)
    seqlens = g.op("Expand", [step32, g.op("Shape", [flat_ids])])  # [B] int32
    total = g.op("Reshape", [g.op("Add", [step32, g.const([1], np.int32)]), g.const([], np.int64)])  # scalar
    images = g.op("Gather", [g.op("Shape", [crosses[0][0]]), g.const([0])], axis=0)
    beams_shape = g.op("Concat", [images, g.const([-1, hidden])], axis=0)  # [images, beams, E]
    token3 = g.const([-1, 1, 3 * hidden])

    pending: tuple[str, np.ndarray | None] | None = None  # a residual branch not yet added (pre-norm)
    for i, layer in enumerate(dec.layers):
        p = f"dec.{i}"
        pk, pv = pasts[i]
        sa, ca = layer.self_attn, layer.cross_attn
        if dec.pre_norm:
            h, x = skip_norm(g, pending[0], x, pending[1], layer.ln_self, f"{p}.ln_self") if pending else \
                (g.layer_norm(x, layer.ln_self, f"{p}.ln_self"), x)
        else:
            h = x
        # self-attention: packed q/k/v into GroupQueryAttention, which appends k/v to the cache in place
        qkv = g.op("Reshape", [g.linears_packed(h, [sa.q, sa.k, sa.v], f"{p}.self.qkv"), token3])
        ctx, present_k, present_v = g.fresh("gqa"), mf.present_key(i), mf.present_value(i)
        g.op("GroupQueryAttention", [qkv, "", "", pk, pv, seqlens, total], outputs=[ctx, present_k, present_v],
             domain=CONTRIB, num_heads=heads, kv_num_heads=heads, scale=1.0)  # q already carries 1/sqrt(d)
        g.declare_output(present_k, "float32", ["batch", heads, "cache_len", head_dim])
        g.declare_output(present_v, "float32", ["batch", heads, "cache_len", head_dim])
        a = g.linear(g.op("Reshape", [ctx, g.const([-1, hidden])]), sa.o, f"{p}.self.o", with_bias=False)
        h, x = _add_norm(g, dec.pre_norm, a, x, sa.o.b, (layer.ln_self, f"{p}.ln_self"), (layer.ln_cross, f"{p}.ln_cross"))
        # cross-attention: an image's beams are one query sequence over the image's K/V
        cq = g.op("Reshape", [g.linear(h, ca.q, f"{p}.cross.q"), beams_shape])
        ck, cv = crosses[i]
        cctx = g.op("MultiHeadAttention", [cq, ck, cv], domain=CONTRIB, num_heads=heads, scale=1.0)
        if attentions:
            q4 = g.op("Reshape", [cq, g.op("Concat", [images, g.const([-1, heads, head_dim])], axis=0)])
            q4 = g.op("Transpose", [q4], perm=[0, 2, 1, 3])  # [images, heads, beams, d]
            scores = g.op("MatMul", [q4, g.op("Transpose", [ck], perm=[0, 1, 3, 2])])  # [images, heads, beams, S]
            att = g.op("Transpose", [g.op("Softmax", [scores], axis=-1)], perm=[0, 2, 1, 3])
            g.output(g.op("Reshape", [att, g.const([-1, heads, enc_seq])]), mf.cross_attention(i), "float32",
                     ["batch", heads, enc_seq])
        a = g.linear(g.op("Reshape", [cctx, g.const([-1, hidden])]), ca.o, f"{p}.cross.o", with_bias=False)
        h, x = _add_norm(g, dec.pre_norm, a, x, ca.o.b, (layer.ln_cross, f"{p}.ln_cross"), (layer.ln_mlp, f"{p}.ln_mlp"))
        m = mlp_activation(g, h, layer.fc1, layer.act, f"{p}.fc1")
        a = g.linear(m, layer.fc2, f"{p}.fc2", with_bias=False)
        if dec.pre_norm:
            pending = (a, layer.fc2.b)
        else:
            x, _ = skip_norm(g, a, x, layer.fc2.b, layer.ln_mlp, f"{p}.ln_mlp")
    if pending is not None:
        if dec.final_ln is not None:
            x, _ = skip_norm(g, pending[0], x, pending[1], dec.final_ln, "dec.ln_f")
        else:
            x = residual(g, pending[0], x, pending[1], "dec.out")
    elif dec.final_ln is not None:
        x = g.layer_norm(x, dec.final_ln, "dec.ln_f")
    if dec.head_transform is not None:  # BERT-style LM head: LayerNorm(act(dense(x)))
        x = g.layer_norm(mlp_activation(g, x, dec.head_transform, dec.head_act, "head.dense"), dec.head_ln, "head.ln")
    logits = g.linear(x, dec.lm_head, "lm_head")  # [B,V]
    g.output(logits, mf.LOGITS, "float32", ["batch", dec.vocab])
    return g.build(), g.specs_in, g.specs_out
