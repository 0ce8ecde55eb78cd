"""TensorRT bits shared by the builder and the runtime: the lazy import, one logger, the machine's identity.

`tensorrt` is imported inside functions only: `import edgecap` must work where it is not installed.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import EdgecapError
from ..extras import install_command
from .cudart import Cuda, load_cuda
from .engines import RuntimeEnv

log = logging.getLogger(__name__)

INSTALL_HINT = (
    f"{install_command('tensorrt')} (TensorRT + cuda-python); on Jetson, TensorRT comes with JetPack "
    "(sudo apt install nvidia-jetpack) and only cuda-python needs pip"
)

_LOGGER: list[Any] = []  # one ILogger per process: TensorRT warns when builder and runtime get different ones


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:
        raise EdgecapError(f"TensorRT is not installed ({exc.name or exc} cannot be imported): {INSTALL_HINT}") from None
    return trt


def trt_logger(trt: Any) -> Any:
    """A tensorrt.ILogger that forwards to Python logging (`edgecap.gpu.tensorrt`)."""
    if _LOGGER:
        return _LOGGER[0]
    out = logging.getLogger("edgecap.gpu.tensorrt")
    S = trt.ILogger.Severity
    levels = {S.INTERNAL_ERROR: logging.ERROR, S.ERROR: logging.ERROR, S.WARNING: logging.WARNING, S.INFO: logging.DEBUG, S.VERBOSE: logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            out.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    _LOGGER.append(_Logger())
    return _LOGGER[0]


def load_trt_cuda() -> tuple[Any, Cuda]:
    """(tensorrt module, cuda-python runtime) with a visible GPU, or a clear EdgecapError."""
    trt = import_tensorrt()
    cuda = load_cuda(require_cuda_python=True)
    try:
        count = cuda.device_count()
    except EdgecapError as exc:
        raise EdgecapError(f"no usable CUDA GPU for TensorRT ({exc})") from None
    if count < 1:
        raise EdgecapError("no CUDA GPU visible (check the driver, CUDA_VISIBLE_DEVICES, or run inside the JetPack container)")
    return trt, cuda


def runtime_env(trt: Any, cuda: Cuda) -> RuntimeEnv:
    name, cc = cuda.device_info()
    return RuntimeEnv(tensorrt_version=str(trt.__version__), gpu_name=name, compute_capability=cc)


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED: opt-in on TensorRT 10, always on (flag deprecated, accepted) on TensorRT 11."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)
