"""The few CUDA runtime calls the GPU backends make: from cuda-python, or from libcudart via ctypes.

cuda-python (`cuda.bindings.runtime`; `cuda.cudart` in releases before 12.6.1) comes with the
`[tensorrt]` extra and is what the TensorRT backend requires (it also captures CUDA graphs). The ONNX
Runtime CUDA backend needs only a stream, memset and (strided) device-to-device copies for its KV
cache. onnxruntime-gpu has loaded libcudart by the time a CUDA session exists, so ctypes reaches the
same library without another dependency (the `[gpu]` extra stays onnxruntime-gpu only).

Everything here speaks plain ints: device pointers, host pointers (`array.ctypes.data`) and streams.
Neither `cuda` nor any CUDA library is imported or loaded before `load_cuda()` is called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib
import logging
import os
import sys
from typing import Any

import numpy as np

from ..errors import EdgecapError
from ..extras import install_command

log = logging.getLogger(__name__)

# cudaMemcpyKind values: part of the CUDA ABI, the same in every CUDA release.
H2D, D2H, D2D = 1, 2, 3
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor

CUDA_PYTHON_HINT = f"{install_command('tensorrt')} (cuda-python; on Jetson: pip install cuda-python==<your CUDA>)"


class CudaError(EdgecapError):
    """A CUDA runtime call failed (the message names the call and CUDA's error string)."""


class Cuda:
    """The CUDA runtime subset edgecap uses. Pointers and streams are ints."""

    name = "abstract"
    supports_graphs = False

    def malloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, ptr: int) -> None:
        raise NotImplementedError

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        raise NotImplementedError

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        raise NotImplementedError

    def copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int, stream: int) -> None:
        """`height` rows of `width` bytes; row r starts at dst + r*dpitch / src + r*spitch."""
        raise NotImplementedError

    def stream_create(self) -> int:
        raise NotImplementedError

    def stream_sync(self, stream: int) -> None:
        raise NotImplementedError

    def device_count(self) -> int:
        raise NotImplementedError

    def device_info(self) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of the current device."""
        raise NotImplementedError

    # CUDA graphs (cuda-python only): capture what a stream is given, replay it later.
    def graph_begin(self, stream: int) -> None:
        raise CudaError(f"CUDA graphs need cuda-python ({self.name} does not capture)")

    def graph_end(self, stream: int) -> Any:
        raise NotImplementedError

    def graph_launch(self, graph_exec: Any, stream: int) -> None:
        raise NotImplementedError

    def graph_destroy(self, graph_exec: Any) -> None:
        pass

    # conveniences over `copy`
    def htod(self, dst: int, host: np.ndarray, stream: int) -> None:
        host = np.ascontiguousarray(host)
        self.copy(dst, host.ctypes.data, host.nbytes, H2D, stream)

    def dtoh(self, host: np.ndarray, src: int, stream: int) -> None:
        if not host.flags.c_contiguous:
            raise ValueError("dtoh needs a C-contiguous host array")
        self.copy(host.ctypes.data, src, host.nbytes, D2H, stream)


class _CudaPython(Cuda):
    """cuda-python's runtime bindings: every call returns (cudaError_t, results...)."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        k = rt.cudaMemcpyKind
        self._kind = {H2D: k.cudaMemcpyHostToDevice, D2H: k.cudaMemcpyDeviceToHost, D2D: k.cudaMemcpyDeviceToDevice}

    def _call(self, fn: str, *args: Any) -> Any:
        result = getattr(self.rt, fn)(*args)
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            text = self.rt.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(f"{fn} failed: {text}")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", max(1, nbytes)))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemsetAsync", ptr, 0, nbytes, stream)

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self._call("cudaMemcpyAsync", dst, src, nbytes, self._kind[kind], stream)

    def copy_2d(self, dst, dpitch, src, spitch, width, height, kind, stream) -> None:
        self._call("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, self._kind[kind], stream)

    def stream_create(self) -> int:
        return int(self._call("cudaStreamCreate"))

    def stream_sync(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", stream)

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def device_info(self) -> tuple[str, str]:
        prop = self._call("cudaGetDeviceProperties", self._call("cudaGetDevice"))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.split("\x00")[0].strip(), f"{prop.major}.{prop.minor}"

    def graph_begin(self, stream: int) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def graph_end(self, stream: int) -> Any:
        graph = self._call("cudaStreamEndCapture", stream)
        try:
            return self._call("cudaGraphInstantiate", graph, 0)
        finally:
            self._call("cudaGraphDestroy", graph)

    def graph_launch(self, graph_exec: Any, stream: int) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)

    def graph_destroy(self, graph_exec: Any) -> None:
        self._call("cudaGraphExecDestroy", graph_exec)


class _CtypesCudart(Cuda):
    """libcudart through ctypes: the functions' C signatures are stable across CUDA 11-13."""

    name = "libcudart"

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, sz, ci = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {
            "cudaMalloc": [ctypes.POINTER(vp), sz],
            "cudaFree": [vp],
            "cudaMemsetAsync": [vp, ci, sz, vp],
            "cudaMemcpyAsync": [vp, vp, sz, ci, vp],
            "cudaMemcpy2DAsync": [vp, sz, vp, sz, sz, sz, ci, vp],
            "cudaStreamCreate": [ctypes.POINTER(vp)],
            "cudaStreamSynchronize": [vp],
            "cudaGetDeviceCount": [ctypes.POINTER(ci)],
            "cudaGetDevice": [ctypes.POINTER(ci)],
            "cudaDeviceGetAttribute": [ctypes.POINTER(ci), ci, ci],
        }
        for fn, argtypes in sigs.items():
            getattr(lib, fn).argtypes = argtypes
            getattr(lib, fn).restype = ci
        lib.cudaGetErrorString.argtypes = [ci]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib = lib

    def _call(self, fn: str, *args: Any) -> None:
        err = getattr(self.lib, fn)(*args)
        if err != 0:
            text = (self.lib.cudaGetErrorString(err) or b"?").decode(errors="replace")
            raise CudaError(f"{fn} failed: {text} (error {err})")

    def malloc(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self._call("cudaMalloc", ctypes.byref(p), max(1, nbytes))
        return int(p.value or 0)

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def memset(self, ptr: int, nbytes: int, stream: int) -> None:
        self._call("cudaMemsetAsync", ptr, 0, nbytes, stream)

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self._call("cudaMemcpyAsync", dst, src, nbytes, kind, stream)

    def copy_2d(self, dst, dpitch, src, spitch, width, height, kind, stream) -> None:
        self._call("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, kind, stream)

    def stream_create(self) -> int:
        s = ctypes.c_void_p()
        self._call("cudaStreamCreate", ctypes.byref(s))
        return int(s.value or 0)

    def stream_sync(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", stream)

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        self._call("cudaGetDeviceCount", ctypes.byref(n))
        return n.value

    def device_info(self) -> tuple[str, str]:
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        self._call("cudaGetDevice", ctypes.byref(dev))
        self._call("cudaDeviceGetAttribute", ctypes.byref(major), _ATTR_CC_MAJOR, dev.value)
        self._call("cudaDeviceGetAttribute", ctypes.byref(minor), _ATTR_CC_MINOR, dev.value)
        return "unknown (libcudart via ctypes)", f"{major.value}.{minor.value}"


def _import_cuda_python() -> Any | None:
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(mod)
        except ImportError:
            continue
    return None


def _libcudart_candidates() -> list[str]:
    if sys.platform == "win32":
        return [f"cudart64_{v}.dll" for v in ("13", "12", "110")]
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"]
    # pip's nvidia-cuda-runtime wheels (what onnxruntime-gpu[cuda] pulls in) live in site-packages
    try:
        nvidia = importlib.import_module("nvidia")
        for root in getattr(nvidia, "__path__", []):
            names += sorted(glob.glob(os.path.join(root, "cu*", "lib", "libcudart.so.*")))
            names += sorted(glob.glob(os.path.join(root, "cuda_runtime", "lib", "libcudart.so.*")))
    except ImportError:
        pass
    found = ctypes.util.find_library("cudart")
    return names + ([found] if found else [])


_LOADED: dict[str, Cuda] = {}


def load_cuda(require_cuda_python: bool = False) -> Cuda:
    """cuda-python if importable, else libcudart via ctypes (unless `require_cuda_python`)."""
    key = "cuda-python" if require_cuda_python else "any"
    if key in _LOADED:
        return _LOADED[key]
    rt = _import_cuda_python()
    if rt is not None:
        impl: Cuda = _CudaPython(rt)
    elif require_cuda_python:
        raise EdgecapError(f"cuda-python is not installed: {CUDA_PYTHON_HINT}")
    else:
        impl = None  # type: ignore[assignment]
        for name in _libcudart_candidates():
            try:
                impl = _CtypesCudart(ctypes.CDLL(name))
                break
            except (OSError, AttributeError):
                continue
        if impl is None:
            raise EdgecapError(
                "the CUDA runtime (libcudart) cannot be loaded: install cuda-python "
                f"({install_command('tensorrt')}) or put the CUDA libraries on the library path"
            )
    log.debug("CUDA runtime through %s", impl.name)
    _LOADED[key] = impl
    return impl
