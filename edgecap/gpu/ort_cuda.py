"""backend="cuda" and backend="ort-tensorrt": ONNX Runtime (onnxruntime-gpu) with device-resident state.

The encoder's cross K/V come back as device `OrtValue`s and stay there; the decoder step is run with
IO binding: past K/V, cross K/V and the new_key/new_value outputs are bound to device memory that is
allocated once per (rows, cache_len) and reused, `input_ids`/`step` are bound from the host and only
the logits are bound to a host buffer. ORT's Python API has no strided device copy, so writing the
new slot into the cache (and gathering beams) uses the CUDA runtime directly (`cudart.py`: cuda-python
or the libcudart onnxruntime-gpu itself loaded), on edgecap's own stream, synchronised before the next
`run_with_iobinding` (ORT computes on its stream and synchronises at the end of each run).

TensorRT EP: engine and timing caches go to `<bundle>/engines/ort-trt/<precision>/` (or the user
cache dir when the bundle is read-only) and profiles are explicit, from the manifest (`profiles.py`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from .. import manifest as mf
from ..backends import check_signature
from ..bundle import Bundle
from ..errors import BundleError, EdgecapError
from ..extras import install_command
from .cudart import Cuda, load_cuda
from .devmem import DeviceTensor
from .engines import engine_dirs, writable_dir
from .profiles import ProfileLimits, default_limits, graph_profile, ort_trt_profile_options
from .stepdecoder import DeviceStepDecoder

log = logging.getLogger(__name__)

PROVIDER = {"cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}
GPU_HINT = (
    f"{install_command('gpu')} after removing the CPU-only onnxruntime (pip uninstall onnxruntime); "
    "on Jetson install the onnxruntime-gpu wheel for your JetPack (Jetson AI Lab / Jetson Zoo), not PyPI's"
)


def require_provider(backend: str) -> None:
    """Raise a clear EdgecapError unless this onnxruntime has the backend's execution provider."""
    want = PROVIDER[backend]
    have = ort.get_available_providers()
    if want not in have:
        raise EdgecapError(
            f"backend {backend!r} needs onnxruntime-gpu with {want} (this onnxruntime {ort.__version__} "
            f"has {', '.join(have)}): {GPU_HINT}"
        )


def provider_options(
    backend: str, bundle: Bundle, precision: str, graph: mf.GraphSpec, role: str, limits: ProfileLimits, device_id: int = 0
) -> list:
    cuda_opts: dict[str, object] = {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC"}
    if precision == "fp32":
        cuda_opts["use_tf32"] = 0  # fp32 means fp32: TF32 MatMuls can flip near-tie tokens vs the CPU
    providers: list = [("CUDAExecutionProvider", cuda_opts)]
    if backend == "ort-tensorrt":
        cache = writable_dir(engine_dirs(bundle, precision, kind="ort-trt"))
        trt_opts: dict[str, object] = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            # Weakly typed builds: with fp16 enabled TensorRT may also run the graph's fp32
            # LayerNorm/Softmax islands in fp16 (overflow: TensorRT #3206). Off, the fp16 graph's
            # own casts decide; backend="tensorrt" builds strongly typed networks instead.
            "trt_fp16_enable": False,
        }
        trt_opts.update(ort_trt_profile_options(graph_profile(graph, role, limits)))
        providers.insert(0, ("TensorrtExecutionProvider", trt_opts))
    return providers


def create_gpu_session(
    bundle: Bundle, graph: mf.GraphSpec, backend: str, precision: str, role: str, limits: ProfileLimits
) -> ort.InferenceSession:
    path = bundle.file(graph.file)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=provider_options(backend, bundle, precision, graph, role, limits))
    except Exception as exc:  # onnxruntime raises its own Fail/EPFail types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph on {PROVIDER[backend]} ({first})") from None
    if PROVIDER[backend] not in sess.get_providers():
        # ORT falls back to CPU with only a log line when CUDA/TensorRT fail to initialise
        raise EdgecapError(
            f"{PROVIDER[backend]} failed to initialise (no CUDA GPU visible, or CUDA/cuDNN/TensorRT libraries "
            f"missing or mismatched); running {', '.join(sess.get_providers())} instead is not what backend {backend!r} means"
        )
    check_signature(sess, graph, str(path))
    return sess


class OrtDeviceEncoder:
    """pixels (host) -> {cross_key.i, cross_value.i} as device tensors owned by OrtValues."""

    def __init__(self, session: ort.InferenceSession, graph: mf.GraphSpec, device_type: str = "cuda", device_id: int = 0) -> None:
        self.session = session
        self.outputs = [(t.name, np.dtype(t.dtype)) for t in graph.outputs]
        self.device_type, self.device_id = device_type, device_id

    def __call__(self, pixel_values: np.ndarray) -> dict[str, DeviceTensor]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(mf.PIXEL_VALUES, np.ascontiguousarray(pixel_values, dtype=np.float32))
        for name, _ in self.outputs:
            binding.bind_output(name, self.device_type, self.device_id)  # ORT allocates, on the device
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {
            name: DeviceTensor(v.data_ptr(), tuple(v.shape()), dtype, owner=v)
            for (name, dtype), v in zip(self.outputs, values)
        }


class OrtStepRunner:
    """`stepdecoder.StepRunner` over an ORT session with IO binding."""

    shares_stream = False  # ORT computes on its own stream

    def __init__(
        self,
        session: ort.InferenceSession,
        graph: mf.GraphSpec,
        arch: mf.Architecture,
        cuda: Cuda,
        stream: int,
        device_type: str = "cuda",
        device_id: int = 0,
        limits: ProfileLimits | None = None,
    ) -> None:
        self.session, self.cuda, self.stream = session, cuda, stream
        self.device_type, self.device_id = device_type, device_id
        self.vocab = arch.vocab_size
        self.outputs = {t.name for t in graph.outputs}
        self.limits = limits  # set for the TensorRT EP: shapes outside it make the EP build another engine
        self._binding: ort.IOBinding | None = None
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._bound_shape: tuple[int, int] | None = None
        self._logits = np.zeros((0, self.vocab), np.float32)
        self._ids = np.zeros((0, 1), np.int64)
        self._step = np.zeros(1, np.int64)
        self._warned = False

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        v = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype).type, self.device_type, self.device_id)
        return DeviceTensor(v.data_ptr(), tuple(shape), np.dtype(dtype), owner=v)

    def check_shape(self, rows: int, cache_len: int) -> None:
        lim = self.limits
        if lim and (rows > lim.max_rows or cache_len > lim.max_new_tokens) and not self._warned:
            self._warned = True
            log.warning(
                "%d rows x %d cache slots is outside the TensorRT EP profile (%d x %d): "
                "ONNX Runtime will build another engine (slow, once per new shape)",
                rows, cache_len, lim.max_rows, lim.max_new_tokens,
            )

    def bind(self, tensors: dict[str, DeviceTensor], rows: int, cache_len: int) -> None:
        b = self._binding
        if b is None or (rows, cache_len) != self._bound_shape:
            b = self._binding = self.session.io_binding()
            self._bound = {}
            self._bound_shape = (rows, cache_len)
            if self._logits.shape[0] != rows:
                self._logits = np.zeros((rows, self.vocab), np.float32)
                self._ids = np.zeros((rows, 1), np.int64)
            # logits land straight in a reused host buffer: the only per-step device->host transfer
            b.bind_output(mf.LOGITS, "cpu", 0, np.float32, [rows, self.vocab], self._logits.ctypes.data)
        for name, t in tensors.items():
            if self._bound.get(name) == (t.ptr, t.shape):
                continue  # after a beam swap only the past K/V addresses change
            bind = b.bind_output if name in self.outputs else b.bind_input
            bind(name, self.device_type, self.device_id, np.dtype(t.dtype).type, list(t.shape), t.ptr)
            self._bound[name] = (t.ptr, t.shape)

    def run(self, tokens: np.ndarray, step: int) -> np.ndarray:
        b = self._binding
        assert b is not None, "bind() before run()"
        self._ids[:] = tokens
        self._step[0] = step
        b.bind_cpu_input(mf.INPUT_IDS, self._ids)
        b.bind_cpu_input(mf.STEP, self._step)
        self.session.run_with_iobinding(b)
        b.synchronize_outputs()
        return self._logits


def create_ort_gpu_models(bundle: Bundle, precision: str, backend: str, device_id: int = 0):
    """(encoder, decoder) for backend "cuda" or "ort-tensorrt"."""
    require_provider(backend)
    man = bundle.manifest
    pair = bundle.graphs(precision)
    limits = default_limits(man)
    enc = create_gpu_session(bundle, pair.encoder, backend, precision, "encoder", limits)
    dec = create_gpu_session(bundle, pair.decoder, backend, precision, "decoder", limits)
    cuda = load_cuda()  # after the sessions: onnxruntime-gpu has loaded libcudart by now
    stream = cuda.stream_create()
    runner = OrtStepRunner(
        dec, pair.decoder, man.architecture, cuda, stream, "cuda", device_id, limits if backend == "ort-tensorrt" else None
    )
    return OrtDeviceEncoder(enc, pair.encoder, "cuda", device_id), DeviceStepDecoder(runner, man.architecture, pair.decoder)
