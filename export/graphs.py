"""ONNX graphs written node by node from family-neutral weights.

We emit the graphs ourselves instead of tracing transformers modules through `torch.onnx`: the
shapes, the cache layout and the op choices are then ours (no `If` node, no concat-grown cache,
cross-attention K/V computed once in the encoder graph) and do not move with torch or
transformers versions. `verify.py` holds them to PyTorch.

Encoder graph:  pixel_values [B,3,H,W] -> cross_key.i [B,h,d,S], cross_value.i [B,h,S,d]
Decoder step:   input_ids [B,1], step [1], past_key.i [B,h,d,T], past_value.i [B,h,T,d], cross K/V
                -> logits [B,V], new_key.i [B,h,d,1], new_value.i [B,h,1,d]
                (+ cross_attention.i [B,h,S] in the attention-emitting variant, `attentions=True`)
The self-attention cache has a fixed length T per call (the runtime's buffer); slots >= step are
masked, so one TensorRT profile covers a whole caption.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecap import manifest as mf

from .graphbuilder import BUILT_PRECISIONS, GraphBuilder, mlp_residual, self_attention, softmax  # noqa: F401 (BUILT_PRECISIONS re-exported)
from .davit_graph import florence2_states
from .swin_graph import swin_tokens
from .weights import Decoder, Encoder, Florence2Encoder, SwinEncoder


def vit_embeddings(g: GraphBuilder, enc: Encoder, px: str) -> str:
    """ViT/DeiT: pixels [B,3,H,W] -> patch embeddings with class/distillation tokens and positions [B, S, E]."""
    hidden = enc.hidden
    conv = g.op(
        "Conv",
        [g.to_compute(px), g.param("patch.weight", enc.patch_w), g.param("patch.bias", enc.patch_b)],
        kernel_shape=[enc.patch, enc.patch],
        strides=[enc.patch, enc.patch],
    )
    patches = g.op("Transpose", [g.op("Reshape", [g.to_float(conv), g.const([0, hidden, -1])])], perm=[0, 2, 1])
    # Class/distillation tokens, one copy per image: Expand the constant to the batch.
    batch = g.op("Gather", [g.op("Shape", [px]), g.const([0])], axis=0)
    prefix_shape = g.op("Concat", [batch, g.const(list(enc.prefix_tokens.shape))], axis=0)
    prefix = g.op("Expand", [g.weight("prefix_tokens", enc.prefix_tokens[None]), prefix_shape])
    return g.op("Add", [g.op("Concat", [prefix, patches], axis=1), g.weight("pos_emb", enc.pos_emb[None])])


def vit_tokens(g: GraphBuilder, enc: Encoder, px: str) -> str:
    """ViT/DeiT: pixels [B,3,H,W] -> encoder states [B, S, E] (fp32)."""
    hidden, heads = enc.hidden, enc.num_heads
    head_dim = hidden // heads
    x = vit_embeddings(g, enc, px)
    for i, layer in enumerate(enc.layers):
        p = f"enc.{i}"
        a = self_attention(g, g.layer_norm(x, layer.ln_attn, f"{p}.ln1"), layer.attn, heads, head_dim, hidden, f"{p}.attn")
        x = g.op("Add", [x, a])
        x = mlp_residual(g, x, layer, p)
    if enc.final_ln is not None:
        x = g.layer_norm(x, enc.final_ln, "enc.ln_f")
    return x


def build_encoder(
    enc: Encoder | SwinEncoder | Florence2Encoder, dec: Decoder, precision: str = "fp32"
) -> tuple[onnx.ModelProto, list, list]:
    """The encoder graph, which also projects every decoder layer's cross-attention K and V.
    Florence-2's also takes the prompt's token ids (mf.ENCODER_PROMPT_IDS) and reads them after the image."""
    # Florence-2's graphs run on ONNX Runtime's CPU provider only (its encoder reads a prompt, which the
    # GPU backends do not feed): its int8 products use the CPU's MatMulIntegerToFloat, still one scale
    # per row (bench/RESULTS.md, Florence-2: the Cast and scale pass over DaViT's activations saved)
    cpu_only_int8 = isinstance(enc, Florence2Encoder) and precision == "int8"
    g = GraphBuilder("edgecap_encoder", precision, int8_form="per-row-fused" if cpu_only_int8 else "per-row")
    h_img, w_img = enc.image_hw
    px = g.input(mf.PIXEL_VALUES, "float32", ["batch", enc.channels, h_img, w_img])
    if isinstance(enc, Florence2Encoder):
        x = florence2_states(g, enc, px)
    elif isinstance(enc, SwinEncoder):
        x = swin_tokens(g, enc, px)
    else:
        x = vit_tokens(g, enc, px)
    if enc.to_decoder is not None:
        x = g.to_float(g.linear(x, enc.to_decoder, "enc_to_dec"))
    seq = enc.cross_seq
    kvs = g.linears(x, [m for layer in dec.layers for m in (layer.cross_attn.k, layer.cross_attn.v)], "dec.cross.kv")
    for i, layer in enumerate(dec.layers):
        k = g.heads(kvs[2 * i], dec.num_heads, dec.head_dim, transpose_key=True)
        v = g.heads(kvs[2 * i + 1], dec.num_heads, dec.head_dim)
        g.output(k, mf.cross_key(i), g.kv_dtype, ["batch", dec.num_heads, dec.head_dim, seq])
        g.output(v, mf.cross_value(i), g.kv_dtype, ["batch", dec.num_heads, seq, dec.head_dim])
    return g.build(), g.specs_in, g.specs_out


def decoder_embeddings(g: GraphBuilder, dec: Decoder, ids: str, step: str) -> tuple[str, str]:
    """(hidden state [B, E], flat token ids [B]) of the tokens fed at `step`: token + position
    embedding (the family's position rule, see weights.Decoder), then any embedding LayerNorm and
    projection. One token per row, so the hidden state is 2-D [B, E] throughout: MatMul+Add become
    Gemm-like kernels and splitting heads is a Reshape, not a Transpose."""
    flat_ids = g.op("Reshape", [ids, g.const([-1])])  # [B]
    tok = g.to_float(g.op("Gather", [g.param("token_emb", dec.token_emb), flat_ids], axis=0))  # [B,E]
    pos_table = g.weight("pos_table", dec.pos_table.astype(np.float32))
    if dec.position_kind == "offset":
        pos_idx = g.op("Add", [step, g.const([dec.pos_offset])]) if dec.pos_offset else step
        pos = g.op("Gather", [pos_table, pos_idx], axis=0)  # [1,E]
    elif dec.position_kind == "nonpad":
        counted = g.op("Add", [step, g.const([dec.pad_idx + 1])])  # [1]
        is_pad = g.op("Equal", [flat_ids, g.const(dec.pad_idx)])  # [B]
        pos_idx = g.op("Where", [is_pad, g.const(dec.pad_idx), counted])  # [B]
        pos = g.op("Gather", [pos_table, pos_idx], axis=0)  # [B,E]
    else:
        raise ValueError(f"unknown position kind {dec.position_kind!r}")
    x = g.op("Add", [tok, pos])
    if dec.emb_ln is not None:
        x = g.layer_norm(x, dec.emb_ln, "dec.emb_ln")
    if dec.emb_proj is not None:
        x = g.to_float(g.linear(x, dec.emb_proj, "dec.emb_proj"))
    return x, flat_ids


def build_decoder_step(
    dec: Decoder, enc_seq: int | str, precision: str = "fp32", attentions: bool = False,
    fp32_parts: tuple[str, ...] = (),
) -> tuple[onnx.ModelProto, list, list]:
    """One KV-cached decoder step over a fixed-length, masked self-attention cache.

    enc_seq: the cross K/V's length, fixed (an int) or symbolic (a name: Florence-2's image + prompt).

    attentions: also output each layer's cross-attention probabilities of this step,
    cross_attention.i [B, heads, S] fp32 (the `--with-attentions` variant). The nodes are only
    added when asked, so the normal graph is byte for byte what it is without the option.

    fp32_parts: int8 only, projections kept in fp32 (graphbuilder.INT8_SENSITIVE_PARTS).
    """
    g = GraphBuilder("edgecap_decoder_step", precision, fp32_parts=fp32_parts)
    heads, head_dim, hidden = dec.num_heads, dec.head_dim, dec.hidden
    kv = g.kv_dtype
    ids = g.input(mf.INPUT_IDS, "int64", ["batch", 1])
    step = g.input(mf.STEP, "int64", [1])
    pasts = []
    for i in range(len(dec.layers)):
        pk = g.input(mf.past_key(i), kv, ["batch", heads, head_dim, "cache_len"])
        pv = g.input(mf.past_value(i), kv, ["batch", heads, "cache_len", head_dim])
        pasts.append((pk, pv))
    crosses = []
    for i in range(len(dec.layers)):
        # "images": one row per image (rows = images x beams), or per row when a backend expands them
        ck = g.input(mf.cross_key(i), kv, ["images", heads, head_dim, enc_seq])
        cv = g.input(mf.cross_value(i), kv, ["images", heads, enc_seq, head_dim])
        crosses.append((ck, cv))

    x, flat_ids = decoder_embeddings(g, dec, ids, step)

    # Mask of valid cache slots: slot < step -> 0, else -inf. Built once, shared by all layers.
    cache_len = g.op("Gather", [g.op("Shape", [pasts[0][1]]), g.const([2])], axis=0)
    slots = g.op("Range", [g.const(0), g.op("Squeeze", [cache_len]), g.const(1)])
    valid = g.op("Less", [slots, step])
    bias = g.op("Where", [valid, g.const(0.0, np.float32), g.const(-np.inf, np.float32)])  # [T]
    split_sizes = g.op("Concat", [cache_len, g.const([1])], axis=0)
    images = g.op("Gather", [g.op("Shape", [crosses[0][0]]), g.const([0])], axis=0)
    cross_shape = g.op("Concat", [images, g.const([-1, heads, 1, head_dim])], axis=0)
    beam_axis = g.const([1])
    cross_k5 = [g.op("Unsqueeze", [ck, beam_axis]) for ck, _ in crosses]  # [b,1,h,d,S]: views, no copies
    cross_v5 = [g.op("Unsqueeze", [cv, beam_axis]) for _, cv in crosses]

    for i, layer in enumerate(dec.layers):
        p = f"dec.{i}"
        pk, pv = pasts[i]
        # self-attention over cache slots [0, step) plus this token (scores and softmax in fp32)
        h = g.layer_norm(x, layer.ln_self, f"{p}.ln_self") if dec.pre_norm else x
        sa = layer.self_attn
        q, k_new, v_new = g.linears(h, [sa.q, sa.k, sa.v], f"{p}.self.qkv")
        q = g.token_heads(q, heads, head_dim)  # [B,h,1,d]
        k_new = g.token_heads(k_new, heads, head_dim, key=True)  # [B,h,d,1]
        v_new = g.token_heads(v_new, heads, head_dim)  # [B,h,1,d]
        g.output(k_new, mf.new_key(i), kv, ["batch", heads, head_dim, 1])
        g.output(v_new, mf.new_value(i), kv, ["batch", heads, 1, head_dim])
        s_past = g.op("Add", [g.to_float(g.op("MatMul", [q, pk])), bias])  # [B,h,1,T]
        s_new = g.to_float(g.op("MatMul", [q, k_new]))  # [B,h,1,1]
        probs = g.op("Softmax", [g.op("Concat", [s_past, s_new], axis=-1)], axis=-1)
        p_past, p_new = g.op("Split", [probs, split_sizes], axis=-1, n_out=2)
        ctx = g.op("Add", [g.op("MatMul", [g.to_compute(p_past), pv]), g.op("Mul", [g.to_compute(p_new), v_new])])
        a = g.to_float(g.linear(g.op("Reshape", [ctx, g.const([-1, hidden])]), sa.o, f"{p}.self.o"))
        x = g.op("Add", [x, a])
        if not dec.pre_norm:
            x = g.layer_norm(x, layer.ln_self, f"{p}.ln_self")
        # cross-attention on K/V the encoder graph projected once per image
        h = g.layer_norm(x, layer.ln_cross, f"{p}.ln_cross") if dec.pre_norm else x
        # Rows are image-major (image b's beams are rows b*nb .. b*nb+nb-1) and the cross K/V may
        # hold one row per image: queries [b,nb,h,1,d] against K/V [b,1,h,d,S] broadcast over the
        # beams, with no per-beam copy of the cross K/V. Each row is its own M=1 product: a
        # [nb,d] x [d,S] product would take another ONNX Runtime kernel for nb=1 than for nb>1 and
        # make a beam's logits depend (by an ulp) on how many beams it has (tests/test_invariance.py).
        cq = g.op("Reshape", [g.linear(h, layer.cross_attn.q, f"{p}.cross.q"), cross_shape])  # [b,nb,h,1,d]
        cprobs = softmax(g, g.op("MatMul", [cq, cross_k5[i]]))  # [b,nb,h,1,S]
        if attentions:
            # The same probabilities from a product of their own: exposing `cprobs` itself would stop
            # ONNX Runtime fusing it into the next product (int8-qdq: QLinearSoftmax + QLinearMatMul),
            # and the variant would then pick its tokens from slightly different logits.
            att = g.op("Softmax", [g.to_float(g.op("MatMul", [cq, cross_k5[i]]))], axis=-1)
            g.output(g.op("Reshape", [att, _rows_heads_seq(g, heads, enc_seq, crosses[0][0])]), mf.cross_attention(i),
                     "float32", ["batch", heads, enc_seq])
        cctx = g.op("Reshape", [g.op("MatMul", [cprobs, cross_v5[i]]), g.const([-1, hidden])])  # [rows,E]
        a = g.to_float(g.linear(cctx, layer.cross_attn.o, f"{p}.cross.o"))
        x = g.op("Add", [x, a])
        if not dec.pre_norm:
            x = g.layer_norm(x, layer.ln_cross, f"{p}.ln_cross")
        # feed-forward
        h = g.layer_norm(x, layer.ln_mlp, f"{p}.ln_mlp") if dec.pre_norm else x
        m = g.activation(g.linear(h, layer.fc1, f"{p}.fc1"), layer.act)
        x = g.op("Add", [x, g.to_float(g.linear(m, layer.fc2, f"{p}.fc2"))])
        if not dec.pre_norm:
            x = g.layer_norm(x, layer.ln_mlp, f"{p}.ln_mlp")
    if dec.final_ln is not None:
        x = g.layer_norm(x, dec.final_ln, "dec.ln_f")
    if dec.head_transform is not None:  # BERT-style LM head: LayerNorm(act(dense(x)))
        x = g.activation(g.linear(x, dec.head_transform, "head.dense"), dec.head_act)
        x = g.layer_norm(x, dec.head_ln, "head.ln")
    logits = g.to_float(g.linear(x, dec.lm_head, "lm_head"))  # [B,V]
    g.output(logits, mf.LOGITS, "float32", ["batch", dec.vocab])
    return g.build(), g.specs_in, g.specs_out


def _rows_heads_seq(g: GraphBuilder, heads: int, enc_seq: int | str, cross_key: str) -> str:
    """The shape [-1, heads, S] of a step's attention rows; a symbolic S read off the cross keys."""
    if isinstance(enc_seq, int):
        return g.const([-1, heads, enc_seq])
    seq = g.op("Gather", [g.op("Shape", [cross_key]), g.const([3])], axis=0)
    return g.op("Concat", [g.const([-1, heads]), seq], axis=0)
