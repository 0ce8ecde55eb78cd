"""Reduced-precision graphs derived from the fp32 ones.

- int8: built directly by `graphs.py` (per-channel int8 weights, per-row dynamic activations:
  batch-invariant, see `graphs.GraphBuilder`). Attention's activation x activation products stay
  fp32. The decoder step is bound by streaming its weights, so int8 weights are a 4x smaller read.
- int4: weight-only 4-bit blocks (MatMulNBits, block 32, int8 compute with activations quantized
  per block of each row: batch-invariant) for the decoder; its encoder is the int8 one.
- int8-qdq: static quantization with calibration, written as explicit QuantizeLinear/
  DequantizeLinear pairs (symmetric int8 weights per channel, symmetric activations): the form
  TensorRT consumes (TensorRT 11 has no implicit INT8 calibration). It runs on ONNX Runtime's CPU
  provider too, so its accuracy is measured here like every other precision.
- fp16: built directly by `graphs.py`, not converted, so LayerNorm/Softmax/residuals
  stay fp32 by construction.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)
# ONNX Runtime's quantizers log every node at INFO; their summary is ours to give.
logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

PRECISIONS = ("fp32", "int8", "fp16", "int4", "int8-qdq")

# Protobuf cannot serialise a message over 2 GiB: graphs whose weights come near it keep them in a
# file beside the graph ("<graph>.onnx.data", listed and checksummed in the manifest like any file).
EXTERNAL_DATA_BYTES = 1_500_000_000


def needs_external_data(size_bytes: int) -> bool:
    return size_bytes > EXTERNAL_DATA_BYTES


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if needs_external_data(model.ByteSize()):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _graph_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


@contextlib.contextmanager
def quiet_root_logger():
    """ONNX Runtime's quantizers log per tensor through the root logger; keep that out of our output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def int4_model(src: Path, block_size: int = 32) -> onnx.ModelProto:
    """The graph at `src` with every weight product as 4-bit MatMulNBits."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))  # external data (the precision's weights.bin) loaded with it
    # accuracy_level 4: activations quantized to int8 inside the kernel (the fast CPU path).
    quant = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=4)
    with quiet_root_logger():
        quant.process()
    return quant.model.model


class FeedsReader:
    """An ONNX Runtime CalibrationDataReader over recorded input feeds."""

    def __init__(self, feeds: list[dict]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def quantize_int8_qdq(src: Path, dst: Path, feeds: list[dict]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    dst.parent.mkdir(parents=True, exist_ok=True)
    with quiet_root_logger():
        quantize_static(
            str(src),
            str(dst),
            FeedsReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True},
            use_external_data_format=needs_external_data(_graph_bytes(src)),
        )
