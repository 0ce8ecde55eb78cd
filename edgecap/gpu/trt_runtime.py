"""backend="tensorrt": engines from `edgecap build-engine`, run with execute_async_v3 + set_tensor_address.

Device buffers and the stream come from cuda-python. The decoder is the same `DeviceStepDecoder` as
the ONNX Runtime CUDA backend (device-resident fixed-length KV cache, one strided copy per slot,
ping-pong buffers for beams); here the copies share TensorRT's stream, so a step costs one host
synchronisation (reading the logits).

Optional CUDA graph capture of the decoder step (EDGECAP_CUDA_GRAPH=1 or `cuda_graph=True`): input
ids and step are copied into fixed device buffers before each launch, and a graph is captured per
bound address set (2 per shape: the ping-pong cache), after one ordinary enqueue as TensorRT asks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import manifest as mf
from ..bundle import Bundle
from ..errors import BundleError, EdgecapError
from .cudart import Cuda
from .devmem import DeviceTensor, device_empty
from .engines import check_engines, engine_dirs, find_engine_dir, read_meta, rebuild_hint
from .profiles import ProfileLimits
from .stepdecoder import DeviceStepDecoder
from .trt_common import load_trt_cuda, runtime_env, trt_logger

log = logging.getLogger(__name__)

CUDA_GRAPH_ENV = "EDGECAP_CUDA_GRAPH"


class EngineIO:
    """An engine + execution context, checked against the manifest's graph signature."""

    def __init__(self, trt: Any, engine: Any, graph: mf.GraphSpec, where: str) -> None:
        self.engine, self.where = engine, where
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        for kind, specs in (("input", graph.inputs), ("output", graph.outputs)):
            for spec in specs:
                if spec.name not in names:
                    raise BundleError(f"{where}: the engine has no {kind} {spec.name}; it was built from another graph")
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name))).name
                if dtype != spec.dtype or (engine.get_tensor_mode(spec.name) == trt.TensorIOMode.INPUT) != (kind == "input"):
                    raise BundleError(f"{where}: engine {kind} {spec.name} is {dtype}, the manifest says {spec.dtype}")
        self.inputs = [t.name for t in graph.inputs]
        # Inputs TensorRT reads on the host (shape-inference inputs) take host addresses.
        self.host_inputs = {n for n in self.inputs if engine.is_shape_inference_io(n)}
        self.context = engine.create_execution_context()

    def profile_max(self, name: str) -> tuple[int, ...]:
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])

    def set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise BundleError(f"{self.where}: {name} shape {tuple(shape)} is outside the engine's profile; {self.hint}")

    def set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, int(ptr)):
            raise EdgecapError(f"{self.where}: TensorRT refused the address of {name}")

    def execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise EdgecapError(f"{self.where}: TensorRT execution failed (rerun with --debug for TensorRT's log)")

    hint = "rebuild with `edgecap build-engine`"


class TrtEncoder:
    """pixels (host) -> cross K/V device tensors; batches above the profile run in chunks."""

    def __init__(self, io: EngineIO, graph: mf.GraphSpec, cuda: Cuda, stream: int, keep: Any = None) -> None:
        self.io, self.cuda, self.stream, self._keep = io, cuda, stream, keep
        self.outputs = [(t.name, np.dtype(t.dtype), tuple(t.shape[1:])) for t in graph.outputs]
        self.max_batch = io.profile_max(mf.PIXEL_VALUES)[0]
        self._input: DeviceTensor | None = None

    def __call__(self, pixel_values: np.ndarray) -> dict[str, DeviceTensor]:
        px = np.ascontiguousarray(pixel_values, dtype=np.float32)
        n = px.shape[0]
        # fresh outputs per call: the decoder may still hold the previous batch's cross K/V
        outs = {name: device_empty(self.cuda, (n,) + rest, dtype) for name, dtype, rest in self.outputs}
        rows = min(n, self.max_batch)
        if self._input is None or self._input.shape != (rows,) + px.shape[1:]:
            self._input = device_empty(self.cuda, (rows,) + px.shape[1:], np.float32)
        for start in range(0, n, self.max_batch):
            chunk = px[start : start + self.max_batch]
            self.cuda.htod(self._input.ptr, chunk, self.stream)
            self.io.set_shape(mf.PIXEL_VALUES, chunk.shape)
            self.io.set_address(mf.PIXEL_VALUES, self._input.ptr)
            for name, t in outs.items():
                self.io.set_address(name, t.ptr + start * t.row_bytes)
            self.io.execute(self.stream)
        self.cuda.stream_sync(self.stream)  # callers time and reuse the result: finish here
        return outs


class TrtStepRunner:
    """`stepdecoder.StepRunner` over a decoder-step engine."""

    shares_stream = True

    def __init__(
        self,
        io: EngineIO,
        arch: mf.Architecture,
        cuda: Cuda,
        stream: int,
        limits: ProfileLimits,
        stale_hint: str,
        cuda_graph: bool = False,
        keep: Any = None,
    ) -> None:
        self.io, self.cuda, self.stream, self.limits, self._keep = io, cuda, stream, limits, keep
        self.vocab = arch.vocab_size
        self.stale_hint = stale_hint
        self.cuda_graph = cuda_graph and cuda.supports_graphs and not io.host_inputs
        if cuda_graph and not self.cuda_graph:
            log.warning("CUDA graphs unavailable here (needs cuda-python and device-side inputs); running without")
        self._rows = -1
        self._ids_host = np.zeros((0, 1), np.int64)
        self._step_host = np.zeros(1, np.int64)
        self._logits_host = np.zeros((0, self.vocab), np.float32)
        self._key: tuple = ()
        self._graphs: dict[tuple, Any] = {}
        self._warm: set[tuple] = set()

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        return device_empty(self.cuda, shape, dtype)

    def check_shape(self, rows: int, cache_len: int) -> None:
        lim = self.limits
        reason = None
        if rows > lim.max_rows:
            reason = f"the profile allows {lim.max_rows} rows (batch {lim.max_batch} x beams {lim.max_beams}), {rows} requested"
        elif cache_len > lim.max_new_tokens:
            reason = f"the profile allows {lim.max_new_tokens} new tokens, {cache_len} requested"
        if reason:
            raise BundleError(f"{self.io.where}: TensorRT engines are stale: {reason}; {self.stale_hint}")

    def bind(self, tensors: dict[str, DeviceTensor], rows: int, cache_len: int) -> None:
        io = self.io
        if rows != self._rows:
            self._ids_host = np.zeros((rows, 1), np.int64)
            self._logits_host = np.zeros((rows, self.vocab), np.float32)
            self._ids = device_empty(self.cuda, (rows, 1), np.int64)
            self._step = device_empty(self.cuda, (1,), np.int64)
            self._logits = device_empty(self.cuda, (rows, self.vocab), np.float32)
            self._rows = rows
            self._drop_graphs()
        small = {mf.INPUT_IDS: (self._ids, self._ids_host), mf.STEP: (self._step, self._step_host)}
        reshape = self._key[:2] != (rows, cache_len)  # after a beam swap only addresses change
        for name in io.inputs:
            if name in small:
                dev, host = small[name]
                if reshape:
                    io.set_shape(name, host.shape)
                io.set_address(name, host.ctypes.data if name in io.host_inputs else dev.ptr)
            else:
                if reshape:
                    io.set_shape(name, tensors[name].shape)
                io.set_address(name, tensors[name].ptr)
        for name, t in tensors.items():
            if name not in small and name not in io.inputs:
                io.set_address(name, t.ptr)  # new_key.i / new_value.i outputs
        io.set_address(mf.LOGITS, self._logits.ptr)
        self._key = (rows, cache_len) + tuple(sorted((n, t.ptr) for n, t in tensors.items()))

    def run(self, tokens: np.ndarray, step: int) -> np.ndarray:
        self._ids_host[:] = tokens
        self._step_host[0] = step
        if mf.INPUT_IDS not in self.io.host_inputs:
            self.cuda.htod(self._ids.ptr, self._ids_host, self.stream)
        if mf.STEP not in self.io.host_inputs:
            self.cuda.htod(self._step.ptr, self._step_host, self.stream)
        self._execute()
        self.cuda.dtoh(self._logits_host, self._logits.ptr, self.stream)
        self.cuda.stream_sync(self.stream)
        return self._logits_host

    def _execute(self) -> None:
        if not self.cuda_graph:
            self.io.execute(self.stream)
            return
        graph = self._graphs.get(self._key)
        if graph is not None:
            self.cuda.graph_launch(graph, self.stream)
            return
        if self._key not in self._warm:  # TensorRT: one enqueue after shape changes, then capture
            self._warm.add(self._key)
            self.io.execute(self.stream)
            return
        try:
            self.cuda.graph_begin(self.stream)
            try:
                ok = self.io.context.execute_async_v3(self.stream)
            finally:
                graph = self.cuda.graph_end(self.stream)
            if not ok:
                raise EdgecapError("enqueue failed during capture")
        except EdgecapError as exc:
            log.warning("CUDA graph capture of the decoder step failed (%s); running without graphs", exc)
            self.cuda_graph = False
            self.io.execute(self.stream)
            return
        self._graphs[self._key] = graph
        self.cuda.graph_launch(graph, self.stream)

    def _drop_graphs(self) -> None:
        for g in self._graphs.values():
            try:
                self.cuda.graph_destroy(g)
            except EdgecapError:
                pass
        self._graphs.clear()
        self._warm.clear()


def _deserialize(trt: Any, runtime: Any, path: Path, hint: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc}); {hint}") from None
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BundleError(f"{path}: TensorRT cannot deserialize this engine; {hint}")
    return engine


def load_tensorrt_models(bundle: Bundle, precision: str, cuda_graph: bool | None = None):
    """(encoder, decoder) for backend "tensorrt", after checking the engines against bundle and machine."""
    trt, cuda = load_trt_cuda()
    env = runtime_env(trt, cuda)
    hint = rebuild_hint(bundle, precision)
    directory = find_engine_dir(bundle, precision)
    if directory is None:
        looked = " or ".join(str(d) for d in engine_dirs(bundle, precision))
        raise BundleError(f"{bundle.path}: no TensorRT engines for {precision} (looked in {looked}); {hint}")
    meta = read_meta(directory)
    gen = bundle.manifest.generation
    check_engines(meta, bundle, precision, env, directory, need_rows=gen.num_beams, need_new_tokens=gen.max_new_tokens)
    runtime = trt.Runtime(trt_logger(trt))
    pair = bundle.graphs(precision)
    ios = {}
    for role, graph in (("encoder", pair.encoder), ("decoder", pair.decoder)):
        path = directory / meta.engines[role].engine
        ios[role] = EngineIO(trt, _deserialize(trt, runtime, path, hint), graph, str(path))
        ios[role].hint = hint
    if cuda_graph is None:
        cuda_graph = os.environ.get(CUDA_GRAPH_ENV, "").lower() in ("1", "true", "yes", "on")
    stream = cuda.stream_create()
    arch = bundle.manifest.architecture
    runner = TrtStepRunner(ios["decoder"], arch, cuda, stream, meta.profile_limits, hint, cuda_graph, keep=runtime)
    log.debug("TensorRT engines from %s (TensorRT %s, %s)", directory, env.tensorrt_version, env.gpu_name)
    return TrtEncoder(ios["encoder"], pair.encoder, cuda, stream, keep=runtime), DeviceStepDecoder(runner, arch, pair.decoder)
