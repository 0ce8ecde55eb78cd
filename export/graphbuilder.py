"""`GraphBuilder`: ONNX graphs written node by node, and the blocks every graph shares.

We emit the graphs ourselves instead of tracing transformers modules through `torch.onnx`: the
shapes, the cache layout and the op choices are then ours and do not move with torch or
transformers versions. The builder owns the precision (fp32, fp16, in-graph int8), so family
graph code never branches on it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecap import manifest as mf

from .weights import Attention, LayerNorm, Linear

OPSET = 17
CONTRIB = "com.microsoft"  # ONNX Runtime's contrib operator domain
_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64}


# Precisions whose graphs this module writes itself (int4 and int8-qdq are derived from fp32 ones).
BUILT_PRECISIONS = ("fp32", "fp16", "int8")
# How an int8 projection is written (GraphBuilder.linear):
#   per-row        per-row quantization, MatMulInteger, then Cast and the two scales as ONNX ops
#   per-row-fused  the same quantization, then MatMulIntegerToFloat with a unit activation scale (the
#                  weights' per-channel scale applied in the kernel) and the per-row scale after it
#   per-image      DynamicQuantizeMatMul: one kernel, one activation scale for the whole tensor, so
#                  batch-invariant only in a graph that always holds one image (fused encoders)
INT8_FORMS = ("per-row", "per-row-fused", "per-image")
# Projections an int8 decoder step may keep in fp32 when int8 alone fails the quality gate: the
# self-attention's q/k/v. On document-shaped models they were where int8 lost agreement (decoder alone:
# 65 % -> 93 % of fp32's decisive tokens on a Donut-shaped model, 92 % -> 98 % on a manga-shaped one,
# keeping them in fp32; the LM head, cross-attention or MLP in fp32 changed little; bench/RESULTS.md):
# attention logits are products of two projections, so their rounding errors multiply.
INT8_SENSITIVE_PARTS = ("self.qkv",)


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

    def __init__(self, name: str, precision: str = "fp32", int8_form: str = "per-row",
                 fp32_parts: tuple[str, ...] = (), fused: bool = False) -> None:
        if precision not in BUILT_PRECISIONS:
            raise ValueError(f"graphs are built in {', '.join(BUILT_PRECISIONS)}, not {precision!r}")
        if int8_form not in INT8_FORMS:
            raise ValueError(f"int8_form must be one of {', '.join(INT8_FORMS)}, not {int8_form!r}")
        self.name = name
        self.precision = precision
        self.int8_form = int8_form
        # int8 graphs: projections whose name contains one of these stay fp32 (INT8_SENSITIVE_PARTS)
        self.fp32_parts = tuple(fp32_parts)
        # fused graphs (fused.py, fused_encoder.py): blocks shared with the plain graphs use ONNX Runtime's
        # fused operators. Independent of int8_form: a plain graph may take a CPU-only int8 form (Florence-2)
        self.fused = fused
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
        self.declare_output(name, dtype, shape)

    def declare_output(self, name: str, dtype: str, shape: list) -> None:
        """A graph output some node already writes under its final `name` (no rename, no Identity)."""
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

    def linear(self, x: str, lin: Linear, prefix: str, with_bias: bool = True) -> str:
        """x (fp32 or compute dtype) @ w + b, in the compute dtype; without the bias when the caller
        adds it elsewhere (a fused operator such as BiasGelu, or the residual add after it)."""
        if not with_bias:
            lin = Linear(lin.w, None)
        if self.precision == "int8" and not any(part in prefix for part in self.fp32_parts):
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
        w_scale = w_scale.astype(np.float32)
        if self.int8_form == "per-image":
            inputs = [x, self.weight(f"{prefix}.weight_q", w_q), self.weight(f"{prefix}.weight_scale", w_scale), ""]
            if lin.b is not None:
                inputs.append(self.weight(f"{prefix}.bias", lin.b.astype(np.float32)))
            return self.op("DynamicQuantizeMatMul", inputs, domain=CONTRIB)
        x_q, x_scale = self.quantize_rows(x)
        if self.int8_form == "per-row-fused":
            acc = self.op("MatMulIntegerToFloat", [x_q, self.weight(f"{prefix}.weight_q", w_q), self.const(1.0, np.float32),
                                                   self.weight(f"{prefix}.weight_scale", w_scale), self.const(128, np.uint8)],
                          domain=CONTRIB)
            y = self.op("Mul", [acc, x_scale])
            if lin.b is not None:
                y = self.op("Add", [y, self.weight(f"{prefix}.bias", lin.b.astype(np.float32))])
            return y
        acc = self.op("MatMulInteger", [x_q, self.weight(f"{prefix}.weight_q", w_q), self.const(128, np.uint8)])
        # (acc * w_scale) * x_scale, in this order: written as acc * (x_scale * w_scale), ONNX Runtime
        # 1.32 fuses it into MatMulIntegerToFloat, which is 1.9x faster here but wrong with a per-row
        # a_scale (up to 32 % error on rows with small scales; bench/RESULTS.md, issue 10's levers).
        y = self.op("Mul", [self.op("Cast", [acc], to=TensorProto.FLOAT), self.weight(f"{prefix}.weight_scale", w_scale)])
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

    def linears_packed(self, x: str, lins: list[Linear], prefix: str) -> str:
        """Several projections of the same input as one product, their outputs side by side (not split):
        what a fused attention operator takes as packed q/k/v."""
        return self.linear(x, Linear(np.concatenate([lin.w for lin in lins], axis=1), packed_bias(lins)), prefix)

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
        opsets = [helper.make_opsetid("", OPSET)]
        if any(n.domain == CONTRIB for n in self.nodes):  # ONNX Runtime's fused operators (fused.py)
            opsets.append(helper.make_opsetid(CONTRIB, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgecap")
        model.ir_version = 8  # readable by onnxruntime >= 1.14 and TensorRT 10
        return model


def softmax(g: GraphBuilder, scores: str) -> str:
    """Softmax in fp32, probabilities back in the compute dtype."""
    return g.to_compute(g.op("Softmax", [g.to_float(scores)], axis=-1))


def self_attention(g: GraphBuilder, x: str, att: Attention, heads: int, head_dim: int, hidden: int, p: str) -> str:
    """Unmasked self-attention over a whole sequence (the encoder); returns fp32."""
    q, k, v = g.linears(x, [att.q, att.k, att.v], f"{p}.qkv")
    q = g.heads(q, heads, head_dim)
    k = g.heads(k, heads, head_dim, transpose_key=True)
    v = g.heads(v, heads, head_dim)
    probs = softmax(g, g.op("MatMul", [q, k]))
    return g.to_float(g.linear(g.merge_heads(g.op("MatMul", [probs, v]), hidden), att.o, f"{p}.o"))


def packed_bias(lins: list[Linear]) -> np.ndarray | None:
    """The biases of projections packed side by side (zeros for those without one), or None if none has one."""
    if all(lin.b is None for lin in lins):
        return None
    return np.concatenate([lin.b if lin.b is not None else np.zeros(lin.w.shape[1], np.float32) for lin in lins])


def mlp_residual(g: GraphBuilder, x: str, layer, p: str) -> str:
    """x + fc2(act(fc1(LayerNorm(x)))): the pre-norm MLP half of a ViT or Swin block."""
    h = g.activation(g.linear(g.layer_norm(x, layer.ln_mlp, f"{p}.ln2"), layer.fc1, f"{p}.fc1"), layer.act)
    return g.op("Add", [x, g.to_float(g.linear(h, layer.fc2, f"{p}.fc2"))])


# Activations with a fused bias form: exact GELU (erf) and the tanh approximation of GPT-2 & co.
_BIAS_ACTIVATIONS = {"gelu": "BiasGelu", "gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu",
                     "gelu_fast": "FastGelu"}


def skip_norm(g: GraphBuilder, a: str, x: str, bias: np.ndarray | None, ln: LayerNorm, p: str) -> tuple[str, str]:
    """(LayerNorm(x + a + bias), x + a + bias): the residual add and the LayerNorm after it.

    Written as Add + LayerNormalization, not ONNX Runtime's fused SkipLayerNormalization: measured on
    this CPU provider (ONNX Runtime 1.32, 2 threads) the fused kernel is slower (394 vs 120 us at
    197 x 768, 43 vs 16 us at 8 x 768, 9.7 vs 7.3 us at 1 x 768) and less accurate (one-pass
    variance: 10x the error of LayerNormalization on activations with a large mean), bench/RESULTS.md."""
    summed = residual(g, a, x, bias, p)
    return g.layer_norm(summed, ln, p), summed


def residual(g: GraphBuilder, a: str, x: str, bias: np.ndarray | None, p: str) -> str:
    """x + a + bias without a LayerNorm after it."""
    if bias is not None:
        a = g.op("Add", [a, g.weight(f"{p}.residual_bias", bias.astype(np.float32))])
    return g.op("Add", [x, a])


def mlp_activation(g: GraphBuilder, x: str, lin: Linear, act: str, p: str) -> str:
    """act(x @ w + b) with the bias inside the activation's kernel where ONNX Runtime has one."""
    op = _BIAS_ACTIVATIONS.get(act)
    if op is None or lin.b is None:
        return g.activation(g.linear(x, lin, p), act)
    y = g.linear(x, lin, p, with_bias=False)
    return g.op(op, [y, g.weight(f"{p}.bias", lin.b.astype(np.float32))], domain=CONTRIB)
