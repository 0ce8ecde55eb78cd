"""backend="auto": TensorRT engines if built and usable, else ONNX Runtime CUDA, else CPU.

The probes are injectable (tests pass fakes) and cheap where nothing GPU-related is installed: the
TensorRT probe runs only when a bundle has engines, and the ONNX Runtime probe first asks
onnxruntime for its providers (the CPU-only wheel answers at once).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import onnxruntime as ort

from ..bundle import Bundle
from ..errors import BundleError, EdgecapError
from .engines import RuntimeEnv, find_engine_dir, read_meta, staleness

log = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("int8-qdq", "fp16", "fp32")  # what `edgecap build-engine` builds, fastest first
ORT_GPU_PRECISIONS = ("fp16", "fp32", "int4", "int8")


@dataclass(frozen=True)
class Probes:
    tensorrt_env: Callable[[], RuntimeEnv | None]  # None: TensorRT, cuda-python or a GPU is missing
    ort_cuda: Callable[[], bool]  # onnxruntime-gpu with CUDAExecutionProvider and a visible GPU


@functools.lru_cache(maxsize=1)
def probe_tensorrt_env() -> RuntimeEnv | None:
    try:
        from .trt_common import load_trt_cuda, runtime_env

        return runtime_env(*load_trt_cuda())
    except EdgecapError as exc:
        log.debug("TensorRT backend unavailable: %s", exc)
    except Exception as exc:  # a broken install (driver/library mismatch) must not break auto
        log.debug("TensorRT backend unavailable: %s: %s", type(exc).__name__, exc)
    return None


@functools.lru_cache(maxsize=1)
def probe_ort_cuda() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        # onnxruntime-gpu lists the provider whether or not a GPU exists; ask the CUDA runtime
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            preload(cuda=True, cudnn=False, msvc=False)
        from .cudart import load_cuda

        return load_cuda().device_count() > 0
    except Exception as exc:
        log.debug("ONNX Runtime CUDA unavailable: %s", exc)
        return False


def default_probes() -> Probes:
    return Probes(tensorrt_env=probe_tensorrt_env, ort_cuda=probe_ort_cuda)


def usable_engine_precisions(bundle: Bundle, env: RuntimeEnv | None, precision: str | None = None) -> list[str]:
    """Precisions (fastest first) with engines that are built and fresh for `env`."""
    out = []
    for p in [precision] if precision else ENGINE_PRECISIONS:
        if p not in bundle.manifest.graphs:
            continue
        directory = find_engine_dir(bundle, p)
        if directory is None or env is None:
            continue
        try:
            reason = staleness(read_meta(directory), bundle, p, env, directory)
        except BundleError as exc:
            reason = str(exc)
        if reason is None:
            out.append(p)
        else:
            log.info("not using the %s TensorRT engines in %s: %s", p, directory, reason)
    return out


def choose_backend(bundle: Bundle, precision: str | None = None, probes: Probes | None = None) -> str:
    probes = probes or default_probes()
    candidates = [precision] if precision else list(ENGINE_PRECISIONS)
    if any(p in bundle.manifest.graphs and find_engine_dir(bundle, p) for p in candidates):
        env = probes.tensorrt_env()
        if env is None:
            log.info("%s has TensorRT engines but TensorRT/cuda-python/a GPU is not available", bundle.path)
        elif usable_engine_precisions(bundle, env, precision):
            return "tensorrt"
    if probes.ort_cuda():
        return "cuda"
    return "cpu"


def precision_preference(bundle: Bundle, backend: str, probes: Probes | None = None) -> tuple[str, ...]:
    """The order a GPU backend tries precisions in when the caller names none."""
    if backend == "tensorrt":
        built = [p for p in ENGINE_PRECISIONS if p in bundle.manifest.graphs and find_engine_dir(bundle, p)]
        if len(built) > 1:  # prefer the fresh ones; loading reports why a stale one cannot run
            env = (probes or default_probes()).tensorrt_env()
            fresh = usable_engine_precisions(bundle, env)
            built = fresh + [p for p in built if p not in fresh]
        return tuple(built) or ENGINE_PRECISIONS
    return ORT_GPU_PRECISIONS
