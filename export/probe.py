"""The bench's machine probes: one weight product per precision, shipped as runtime package data.

`edgecap-bench` times each through ONNX Runtime to learn what this machine's kernel for that
precision reaches (edgecap/benchfloors.py says how the numbers are used). The graphs are made by
the same code that makes a bundle's graphs (GraphBuilder for fp32/fp16/int8, quantize.py for int4
and int8-qdq), so a probe runs exactly the kernel its precision runs. Their weights are stored as
external data that is never written: the bench generates it in memory (`benchfloors.probe_data`).

Regenerate with `python -m edgecap_export.probe` (a few seconds, ~1 GB of memory).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from edgecap import benchfloors as bf

from . import quantize
from .graphs import GraphBuilder
from .weights import Linear

# Tensors at least this large are the probe's weights (external); smaller ones (per-channel
# scales, zero points) stay in the graph with the values the exporter gave them.
EXTERNAL_MIN_BYTES = 1 << 20


def _fp_graph(precision: str, w: np.ndarray) -> onnx.ModelProto:
    """c = a @ w as a bundle's linear layer of `precision` (fp32, fp16 or int8) writes it."""
    g = GraphBuilder(f"probe_{precision}", precision)
    a = g.input("a", "float32", ["m", bf.PROBE_K])
    g.output(g.to_float(g.linear(a, Linear(w, None), "probe")), "c", "float32", ["m", bf.PROBE_N])
    return g.build()


def _derived_graph(precision: str, w: np.ndarray) -> onnx.ModelProto:
    """int4 / int8-qdq: the fp32 probe through the exporter's own quantizers."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / f"{precision}.onnx"
        onnx.save_model(_fp_graph("fp32", w), str(src))
        if precision == "int4":
            return quantize.int4_model(src, bf.INT4_BLOCK)
        else:
            feeds = [{"a": np.random.default_rng(i).standard_normal((4, bf.PROBE_K)).astype(np.float32)} for i in range(2)]
            quantize.quantize_int8_qdq(src, dst, feeds)
        return onnx.load(str(dst))


def _externalize(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """Move the weight tensors to external data named and laid out as benchfloors expects."""
    big = [t for t in model.graph.initializer if len(t.raw_data) >= EXTERNAL_MIN_BYTES]
    spec, layout = bf.PROBE_TENSORS[precision], bf.probe_layout(precision)
    found = [(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name, tuple(t.dims)) for t in big]
    expected = [(dtype, shape) for _, dtype, shape, _ in spec]
    if found != expected:
        raise RuntimeError(f"{precision} probe: weight tensors {found} do not match benchfloors.PROBE_TENSORS {expected}")
    renames = {}
    for tensor, (name, offset, length) in zip(big, layout):
        renames[tensor.name] = name
        tensor.name = name
        external_data_helper.set_external_data(tensor, bf.probe_data_name(precision), offset, length)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    for node in model.graph.node:
        for i, v in enumerate(node.input):
            node.input[i] = renames.get(v, v)
    return model


def probe_model(precision: str) -> onnx.ModelProto:
    w = (np.random.default_rng(0).standard_normal((bf.PROBE_K, bf.PROBE_N), dtype=np.float32) * 0.02)
    if precision in ("int4", "int8-qdq"):
        model = _derived_graph(precision, w)
    else:
        model = _fp_graph(precision, w)
    model.producer_name = "edgecap-probe"
    return _externalize(model, precision)


def write_probes(out_dir: Path = bf.PROBE_DIR) -> list[Path]:
    paths = []
    for precision in bf.PROBE_PRECISIONS:
        path = out_dir / bf.probe_file(precision).name
        # onnx.save_model would try to write the (cleared) external data: serialise the graph only
        path.write_bytes(probe_model(precision).SerializeToString())
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_probes():
        print(p)
