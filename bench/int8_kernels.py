"""One int8 projection y = x @ W + b in each form ONNX Runtime can run, timed side by side (issue 20).

    python bench/int8_kernels.py [--threads 2] [--rows 1,4,8,32,197] [--json out.json]

Forms: the per-row graph edgecap shipped (`GraphBuilder` int8: ~11 kernels), per-row quantization +
`MatMulIntegerToFloat` with a unit activation scale (the per-row scale applied after: correct), ONNX
Runtime's `DynamicQuantizeMatMul` (one kernel, but one scale for the whole tensor: invariant only
when the tensor is one image), `MatMulNBits` 8-bit with int8 compute (`accuracy_level` 4) at blocks
32 and 128, and fp32. For each: median ms, and whether a row's result is bit-identical alone and in
the batch (the invariance edgecap needs). Run alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecap_export.graphbuilder import GraphBuilder  # noqa: E402
from edgecap_export.weights import Linear  # noqa: E402


def _session(model, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _model(nodes, inits, k: int):
    graph = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def per_row_graph(lin: Linear):
    g = GraphBuilder("p", "int8")
    x = g.input("x", "float32", ["m", lin.w.shape[0]])
    g.output(g.linear(x, lin, "proj"), "y", "float32", ["m", lin.w.shape[1]])
    return g.build()


def _row_quant_nodes():
    return [
        helper.make_node("Abs", ["x"], ["ax"]),
        helper.make_node("ReduceMax", ["ax"], ["amax"], axes=[-1], keepdims=1),
        helper.make_node("Mul", ["amax", "inv127"], ["s0"]),
        helper.make_node("Max", ["s0", "tiny"], ["xs"]),
        helper.make_node("Div", ["x", "xs"], ["xd"]),
        helper.make_node("QuantizeLinear", ["xd", "one", "zp"], ["xq"]),
    ]


def _quant_consts():
    return [numpy_helper.from_array(np.array(1 / 127, np.float32), "inv127"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), "tiny"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(128, np.uint8), "zp")]


def _weights_s8(lin: Linear):
    ws = np.abs(lin.w).max(axis=0) / 127.0
    ws[ws == 0] = 1.0
    return np.clip(np.round(lin.w / ws), -127, 127).astype(np.int8), ws.astype(np.float32)


def per_row_to_float_graph(lin: Linear):
    wq, ws = _weights_s8(lin)
    nodes = _row_quant_nodes() + [
        helper.make_node("MatMulIntegerToFloat", ["xq", "wq", "one", "ws", "zp"], ["acc"], domain="com.microsoft"),
        helper.make_node("Mul", ["acc", "xs"], ["y0"]),
        helper.make_node("Add", ["y0", "b"], ["y"]),
    ]
    inits = _quant_consts() + [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"),
                               numpy_helper.from_array(lin.b, "b")]
    return _model(nodes, inits, lin.w.shape[0])


def dynamic_graph(lin: Linear):
    wq, ws = _weights_s8(lin)
    nodes = [helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws", "", "b"], ["y"], domain="com.microsoft")]
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(lin.b, "b")]
    return _model(nodes, inits, lin.w.shape[0])


def nbits_graph(lin: Linear, block: int, accuracy: int = 4, bits: int = 8):
    k, n = lin.w.shape
    blocks = k // block
    w = lin.w.T.reshape(n, blocks, block)  # [N, blocks, block]
    scale = np.abs(w).max(axis=-1) / 127.0
    scale[scale == 0] = 1.0
    if bits == 8:
        q = (np.clip(np.round(w / scale[..., None]), -128, 127) + 128).astype(np.uint8)  # zero point 128
    else:  # two 4-bit values per byte, zero point 8
        scale = np.abs(w).max(axis=-1) / 7.0
        scale[scale == 0] = 1.0
        v = (np.clip(np.round(w / scale[..., None]), -8, 7) + 8).astype(np.uint8)
        q = (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)
    nodes = [helper.make_node("MatMulNBits", ["x", "wq", "sc", "", "", "b"], ["y"], domain="com.microsoft", K=k, N=n,
                              bits=bits, block_size=block, accuracy_level=accuracy)]
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale.astype(np.float32).reshape(-1), "sc"),
             numpy_helper.from_array(lin.b, "b")]
    return _model(nodes, inits, k)


def fp32_graph(lin: Linear):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])]
    return _model(nodes, [numpy_helper.from_array(lin.w, "w"), numpy_helper.from_array(lin.b, "b")], lin.w.shape[0])


FORMS = {
    "per-row (shipped)": per_row_graph,
    "per-row + MatMulIntegerToFloat": per_row_to_float_graph,
    "DynamicQuantizeMatMul (per tensor)": dynamic_graph,
    "MatMulNBits 8-bit block 32": lambda lin: nbits_graph(lin, 32),
    "MatMulNBits 8-bit block 128": lambda lin: nbits_graph(lin, 128),
    "MatMulNBits 8-bit block 32, fp32 compute": lambda lin: nbits_graph(lin, 32, accuracy=0),
    "MatMulNBits 8-bit block 128, fp32 compute": lambda lin: nbits_graph(lin, 128, accuracy=0),
    "MatMulNBits 4-bit block 32, fp32 compute": lambda lin: nbits_graph(lin, 32, accuracy=0, bits=4),
    "MatMulNBits 4-bit block 32, int8 compute": lambda lin: nbits_graph(lin, 32, accuracy=4, bits=4),
    "fp32": fp32_graph,
}


def measure(session, x: np.ndarray, repeat: int) -> float:
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default="1,4,8,32,197")
    p.add_argument("--shape", default="768x3072", help="K x N of the weight")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--json")
    args = p.parse_args(argv)
    k, n = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    lin = Linear(rng.standard_normal((k, n)).astype(np.float32) * 0.05, rng.standard_normal(n).astype(np.float32))
    sessions = {name: _session(build(lin), args.threads) for name, build in FORMS.items()}
    rows = [int(r) for r in args.rows.split(",")]
    x_all = rng.standard_normal((max(rows), k)).astype(np.float32) * rng.uniform(0.01, 10, (max(rows), 1)).astype(np.float32)
    result = {"shape": [k, n], "threads": args.threads, "rows": rows, "forms": {}}
    reference = x_all @ lin.w + lin.b
    for name, session in sessions.items():
        entry = {"ms": {}}
        for m in rows:
            entry["ms"][m] = round(measure(session, x_all[:m], args.repeat), 4)
        batch = session.run(None, {"x": x_all[:8]})[0]
        entry["row_invariant"] = all(np.array_equal(session.run(None, {"x": x_all[i:i + 1]})[0][0], batch[i])
                                     for i in range(8))
        out = session.run(None, {"x": x_all})[0]
        entry["max_rel_error"] = float(np.max(np.abs(out - reference) / (np.abs(reference).max(axis=1, keepdims=True))))
        result["forms"][name] = entry
        print(f"{name:38s} " + " ".join(f"{m}:{entry['ms'][m]:8.3f}" for m in rows)
              + f"  invariant={entry['row_invariant']} err={entry['max_rel_error']:.3g}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
