"""GPU backends: ONNX Runtime CUDA ("cuda"), ONNX Runtime TensorRT EP ("ort-tensorrt"), TensorRT ("tensorrt").

Importing this package imports nothing GPU-specific: onnxruntime-gpu's providers, `tensorrt` and
cuda-python (`cuda.bindings`) are reached only when a GPU backend is constructed, and a missing piece
raises an `EdgecapError` naming it. See docs/gpu.md.

Every backend returns the same objects: an encoder `(pixel_values) -> {name: DeviceTensor}` and a
`decoding.StepModel` (`DeviceStepDecoder`) that keeps the KV cache and cross K/V on the device.
"""

from __future__ import annotations

from typing import Any

from ..bundle import Bundle
from ..errors import EdgecapError

GPU_BACKENDS = ("cuda", "ort-tensorrt", "tensorrt")


def create_models(bundle: Bundle, precision: str, backend: str, cuda_graph: bool | None = None) -> tuple[Any, Any]:
    """(encoder, decoder) of a GPU backend for `bundle`'s graphs of `precision`.

    cuda_graph: TensorRT only; None = the EDGECAP_CUDA_GRAPH environment variable (off by default).
    """
    if backend in ("cuda", "ort-tensorrt"):
        from .ort_cuda import create_ort_gpu_models

        return create_ort_gpu_models(bundle, precision, backend)
    if backend == "tensorrt":
        from .trt_runtime import load_tensorrt_models

        return load_tensorrt_models(bundle, precision, cuda_graph=cuda_graph)
    raise EdgecapError(f"not a GPU backend: {backend!r} (GPU backends: {', '.join(GPU_BACKENDS)})")


def precision_preference(bundle: Bundle, backend: str) -> tuple[str, ...]:
    from .select import precision_preference as _pref

    return _pref(bundle, backend)


__all__ = ["GPU_BACKENDS", "create_models", "precision_preference"]
