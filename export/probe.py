"""The bench's machine probe: a bare MatMul graph (no weights) shipped as runtime package data.

`edgecap-bench` runs it through ONNX Runtime to measure what this machine's matmul kernels reach:
a square product (compute rate) and a 1-row product against a large matrix (the weight-streaming
read rate a decoder step is bound by). Regenerate with `python -m edgecap_export.probe`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

PROBE = Path(__file__).resolve().parent.parent / "edgecap" / "data" / "probe_matmul.onnx"


def probe_model() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", "k"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k", "n"])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", "n"])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "probe", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgecap")
    model.ir_version = 8
    return model


if __name__ == "__main__":
    onnx.save_model(probe_model(), str(PROBE))
    print(PROBE)
