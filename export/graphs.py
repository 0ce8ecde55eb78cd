"""ONNX graphs written node by node from family-neutral weights.

We emit the graphs ourselves instead of tracing transformers modules through `torch.onnx`: the
shapes, the cache layout and the op choices are then ours (no `If` node, no concat-grown cache,
cross-attention K/V computed once in the encoder graph) and do not move with torch or
transformers versions. `verify.py` holds them to PyTorch.

Encoder graph:  pixel_values [B,3,H,W] -> cross_key.i [B,h,d,S], cross_value.i [B,h,S,d]
Decoder step:   input_ids [B,1], step [1], past_key.i [B,h,d,T], past_value.i [B,h,T,d], cross K/V
                -> logits [B,V], new_key.i [B,h,d,1], new_value.i [B,h,1,d]
The self-attention cache has a fixed length T per call (the runtime's buffer); slots >= step are
masked, so one TensorRT profile covers a whole caption.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecap import manifest as mf

from .weights import Attention, Decoder, Encoder, LayerNorm, Linear

OPSET = 17
_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64}


# Precisions whose graphs this module writes itself (int4 and int8-qdq are derived from fp32 ones).
BUILT_PRECISIONS = ("fp32", "fp16", "int8")


class GraphBuilder:
    """A thin, name-managing wrapper over onnx.helper.

    precision "fp16": weights, matmuls and caches in fp16; LayerNorm, Softmax, activations and the
    residual stream stay fp32, where fp16 overflows (TensorRT #3206, #2564: NaN/garbage from fp16
    LayerNorm). Casts mark the boundaries, so precision lives in the graph.

    precision "int8": every weight product is an int8 MatMulInteger with per-output-channel
    symmetric weights and activations quantized *per row* (per token) at run time, so a row's
    result never depends on the other rows of the batch: ONNX Runtime's dynamic quantization
    (DynamicQuantizeLinear) takes one scale for the whole tensor, i.e. for every image and beam
    together, which made captions change with the batch. Measured on the CPU provider, this form
    is as fast as that one at every batch size (bench/RESULTS.md).
    """

    def __init__(self, name: str, precision: str = "fp32") -> None:
        if precision not in BUILT_PRECISIONS:
            raise ValueError(f"graphs are built in {', '.join(BUILT_PRECISIONS)}, not {precision!r}")
        self.name = name
        self.precision = precision
        self.half = precision == "fp16"
        self.kv_dtype = "float16" if self.half else "float32"
        self._casts: dict[tuple[str, int], str] = {}
        self._row_quant: dict[str, tuple[str, str]] = {}
        self._renames: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.specs_in: list[mf.TensorSpec] = []
        self.specs_out: list[mf.TensorSpec] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def input(self, name: str, dtype: str, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, _DTYPES[dtype], shape))
        self.specs_in.append(mf.TensorSpec(name, dtype, list(shape)))
        return name

    def output(self, value: str, name: str, dtype: str, shape: list) -> None:
        """Expose `value` as a graph output called `name`: renamed at build(), not copied through an
        Identity node, each of which would cost a kernel launch per decoder step."""
        if value in {i.name for i in self.inputs} or value in self._renames:
            self.op("Identity", [value], outputs=[name])
        else:
            self._renames[value] = name
        self.outputs.append(helper.make_tensor_value_info(name, _DTYPES[dtype], shape))
        self.specs_out.append(mf.TensorSpec(name, dtype, list(shape)))

    def weight(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def param(self, name: str, array: np.ndarray) -> str:
        """A matmul weight or table, stored in the compute precision."""
        return self.weight(name, array.astype(np.float16 if self.half else np.float32))

    def cast(self, x: str, to: int) -> str:
        """Cast x (once per value) to TensorProto type `to`; a no-op in fp32 graphs."""
        if not self.half:
            return x
        key = (x, to)
        if key not in self._casts:
            self._casts[key] = self.op("Cast", [x], to=to)
        return self._casts[key]

    def to_compute(self, x: str) -> str:
        return self.cast(x, TensorProto.FLOAT16)

    def to_float(self, x: str) -> str:
        return self.cast(x, TensorProto.FLOAT)

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(self.fresh("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, n_out: int = 1, **attrs) -> str:
        if outputs is None:
            outputs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(op_type), **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    # --- layers ----------------------------------------------------------------------------

    def linear(self, x: str, lin: Linear, prefix: str) -> str:
        """x (fp32 or compute dtype) @ w + b, in the compute dtype."""
        if self.precision == "int8":
            return self._linear_int8(x, lin, prefix)
        y = self.op("MatMul", [self.to_compute(x), self.param(f"{prefix}.weight", lin.w)])
        if lin.b is not None:
            y = self.op("Add", [y, self.param(f"{prefix}.bias", lin.b)])
        return y

    def quantize_rows(self, x: str) -> tuple[str, str]:
        """(x_q, scale): x [..., K] fp32 as uint8 with zero point 128, one symmetric scale per row.

        uint8 with a fixed zero point (not int8) because ONNX Runtime's fast x86 int8 GEMM is
        u8 x s8, and MatMulInteger only takes a scalar activation zero point. Computed once per
        value and shared by every projection of it.
        """
        if x not in self._row_quant:
            amax = self.op("ReduceMax", [self.op("Abs", [x])], axes=[-1], keepdims=1)
            scale = self.op("Max", [self.op("Mul", [amax, self.const(1 / 127, np.float32)]),
                                    self.const(np.finfo(np.float32).tiny, np.float32)])
            q = self.op("QuantizeLinear", [self.op("Div", [x, scale]), self.const(1.0, np.float32),
                                           self.const(128, np.uint8)])
            self._row_quant[x] = (q, scale)
        return self._row_quant[x]

    def _linear_int8(self, x: str, lin: Linear, prefix: str) -> str:
        w_scale = np.abs(lin.w).max(axis=0) / 127.0
        w_scale[w_scale == 0] = 1.0
        w_q = np.clip(np.round(lin.w / w_scale), -127, 127).astype(np.int8)
        x_q, x_scale = self.quantize_rows(x)
        acc = self.op("MatMulInteger", [x_q, self.weight(f"{prefix}.weight_q", w_q), self.const(128, np.uint8)])
        y = self.op("Mul", [self.op("Cast", [acc], to=TensorProto.FLOAT),
                            self.weight(f"{prefix}.weight_scale", w_scale.astype(np.float32))])
        y = self.op("Mul", [y, x_scale])
        if lin.b is not None:
            y = self.op("Add", [y, self.weight(f"{prefix}.bias", lin.b.astype(np.float32))])
        return y

    def linears(self, x: str, lins: list[Linear], prefix: str) -> list[str]:
        """Several projections of the same input as one MatMul, then a Split: one larger product
        streams the input once and costs one kernel launch instead of len(lins) (q/k/v; every
        decoder layer's cross K and V at once)."""
        if len(lins) == 1:
            return [self.linear(x, lins[0], prefix)]
        w = np.concatenate([lin.w for lin in lins], axis=1)
        if any(lin.b is not None for lin in lins):
            b = np.concatenate([lin.b if lin.b is not None else np.zeros(lin.w.shape[1], np.float32) for lin in lins])
        else:
            b = None
        y = self.linear(x, Linear(w, b), prefix)
        sizes = self.const([lin.w.shape[1] for lin in lins])
        return list(self.op("Split", [y, sizes], axis=-1, n_out=len(lins)))

    def layer_norm(self, x: str, ln: LayerNorm, prefix: str) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.weight(f"{prefix}.weight", ln.w), self.weight(f"{prefix}.bias", ln.b)],
            axis=-1,
            epsilon=float(ln.eps),
        )

    def activation(self, x: str, name: str) -> str:
        """Activations run in fp32 (tanh-GELU's x**3 overflows fp16 beyond |x| ~ 40)."""
        x = self.to_float(x)
        if name == "gelu":  # exact, erf-based
            # x / sqrt(2) as a Div: the form ONNX Runtime's GeluFusion recognises (Gelu / BiasGelu)
            e = self.op("Erf", [self.op("Div", [x, self.const(math.sqrt(2), np.float32)])])
            return self.op("Mul", [self.op("Mul", [x, self.const(0.5, np.float32)]), self.op("Add", [e, self.const(1.0, np.float32)])])
        if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            x3 = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Add", [x, self.op("Mul", [x3, self.const(0.044715, np.float32)])])
            t = self.op("Tanh", [self.op("Mul", [inner, self.const(math.sqrt(2 / math.pi), np.float32)])])
            return self.op("Mul", [self.op("Mul", [x, self.const(0.5, np.float32)]), self.op("Add", [t, self.const(1.0, np.float32)])])
        if name == "relu":
            return self.op("Relu", [x])
        if name == "quick_gelu":
            return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.const(1.702, np.float32)])])])
        if name in ("silu", "swish"):
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        raise ValueError(f"activation {name!r} not implemented")

    def heads(self, x: str, num_heads: int, head_dim: int, transpose_key: bool = False) -> str:
        """[B, S, h*d] -> [B, h, S, d], or [B, h, d, S] for keys we keep transposed."""
        r = self.op("Reshape", [x, self.const([0, 0, num_heads, head_dim])])
        return self.op("Transpose", [r], perm=[0, 2, 3, 1] if transpose_key else [0, 2, 1, 3])

    def token_heads(self, x: str, num_heads: int, head_dim: int, key: bool = False) -> str:
        """One token, [B, h*d] -> [B, h, 1, d] (or [B, h, d, 1] for a key): a Reshape, no copy."""
        shape = [-1, num_heads, head_dim, 1] if key else [-1, num_heads, 1, head_dim]
        return self.op("Reshape", [x, self.const(shape)])

    def merge_heads(self, x: str, hidden: int) -> str:
        """[B, h, S, d] -> [B, S, h*d]."""
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.const([0, 0, hidden])])

    def build(self) -> onnx.ModelProto:
        for node in self.nodes:
            for field in (node.input, node.output):
                for i, v in enumerate(field):
                    if v in self._renames:
                        field[i] = self._renames[v]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgecap")
        model.ir_version = 8  # readable by onnxruntime >= 1.14 and TensorRT 10
        return model


def _softmax(g: GraphBuilder, scores: str) -> str:
    """Softmax in fp32, probabilities back in the compute dtype."""
    return g.to_compute(g.op("Softmax", [g.to_float(scores)], axis=-1))


def _self_mha_full(g: GraphBuilder, x: str, att: Attention, heads: int, head_dim: int, hidden: int, p: str) -> str:
    """Unmasked self-attention over a whole sequence (the encoder); returns fp32."""
    q, k, v = g.linears(x, [att.q, att.k, att.v], f"{p}.qkv")
    q = g.heads(q, heads, head_dim)
    k = g.heads(k, heads, head_dim, transpose_key=True)
    v = g.heads(v, heads, head_dim)
    probs = _softmax(g, g.op("MatMul", [q, k]))
    return g.to_float(g.linear(g.merge_heads(g.op("MatMul", [probs, v]), hidden), att.o, f"{p}.o"))


def build_encoder(enc: Encoder, dec: Decoder, precision: str = "fp32") -> tuple[onnx.ModelProto, list, list]:
    """The encoder graph, which also projects every decoder layer's cross-attention K and V."""
    g = GraphBuilder("edgecap_encoder", precision)
    h_img, w_img = enc.image_hw
    px = g.input(mf.PIXEL_VALUES, "float32", ["batch", enc.channels, h_img, w_img])
    hidden, heads = enc.hidden, enc.num_heads
    head_dim = hidden // heads
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
    x = g.op("Add", [g.op("Concat", [prefix, patches], axis=1), g.weight("pos_emb", enc.pos_emb[None])])
    for i, layer in enumerate(enc.layers):
        p = f"enc.{i}"
        a = _self_mha_full(g, g.layer_norm(x, layer.ln_attn, f"{p}.ln1"), layer.attn, heads, head_dim, hidden, f"{p}.attn")
        x = g.op("Add", [x, a])
        h = g.activation(g.linear(g.layer_norm(x, layer.ln_mlp, f"{p}.ln2"), layer.fc1, f"{p}.fc1"), layer.act)
        x = g.op("Add", [x, g.to_float(g.linear(h, layer.fc2, f"{p}.fc2"))])
    if enc.final_ln is not None:
        x = g.layer_norm(x, enc.final_ln, "enc.ln_f")
    if enc.to_decoder is not None:
        x = g.to_float(g.linear(x, enc.to_decoder, "enc_to_dec"))
    seq = enc.seq_len
    kvs = g.linears(x, [m for layer in dec.layers for m in (layer.cross_attn.k, layer.cross_attn.v)], "dec.cross.kv")
    for i, layer in enumerate(dec.layers):
        k = g.heads(kvs[2 * i], dec.num_heads, dec.head_dim, transpose_key=True)
        v = g.heads(kvs[2 * i + 1], dec.num_heads, dec.head_dim)
        g.output(k, mf.cross_key(i), g.kv_dtype, ["batch", dec.num_heads, dec.head_dim, seq])
        g.output(v, mf.cross_value(i), g.kv_dtype, ["batch", dec.num_heads, seq, dec.head_dim])
    return g.build(), g.specs_in, g.specs_out


def build_decoder_step(dec: Decoder, enc_seq: int, precision: str = "fp32") -> tuple[onnx.ModelProto, list, list]:
    """One KV-cached decoder step over a fixed-length, masked self-attention cache."""
    g = GraphBuilder("edgecap_decoder_step", precision)
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

    # Embeddings: token + position (position rule from the family, see weights.Decoder). One token
    # per row, so the hidden state is 2-D [B, E] throughout: MatMul+Add become Gemm-like kernels and
    # splitting heads is a Reshape, not a Transpose.
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
        cprobs = _softmax(g, g.op("MatMul", [cq, cross_k5[i]]))  # [b,nb,h,1,S]
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
    logits = g.to_float(g.linear(x, dec.lm_head, "lm_head"))  # [B,V]
    g.output(logits, mf.LOGITS, "float32", ["batch", dec.vocab])
    return g.build(), g.specs_in, g.specs_out
