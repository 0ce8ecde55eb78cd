"""ONNX Runtime sessions for a bundle's graphs, and the KV-cached decoder they drive.

The CPU path is what runs here and in CI. The cache lives in preallocated numpy buffers that are
reused across steps; each step writes only its new K/V slot (no concat-grown cache as in Optimum).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from . import manifest as mf
from .bundle import Bundle
from .errors import BundleError, EdgecapError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "ort-tensorrt", "tensorrt")  # GPU ones: edgecap/gpu, docs/gpu.md
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class SessionOptions:
    threads: int | None = None  # intra-op threads; None = ONNX Runtime's default (all cores)


def resolve_backend(backend: str | None, bundle: Bundle | None = None, precision: str | None = None) -> str:
    """Validate a backend name; "auto" becomes the best one available for `bundle` (CPU without a bundle).

    auto: TensorRT engines if built and usable, else ONNX Runtime CUDA, else CPU (`gpu/select.py`).
    """
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise EdgecapError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if bundle is None:
        return "cpu"
    from .gpu.select import choose_backend  # lazy: probes GPU packages only when asked

    return choose_backend(bundle, precision)


def _providers(backend: str) -> list[str]:
    return ["CPUExecutionProvider"]


def create_session(bundle: Bundle, graph: mf.GraphSpec, backend: str, opts: SessionOptions) -> ort.InferenceSession:
    path = bundle.file(graph.file)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if opts.threads:
        so.intra_op_num_threads = opts.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=_providers(backend))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({first})") from None
    check_signature(sess, graph, str(path))
    return sess


def check_signature(sess: ort.InferenceSession, graph: mf.GraphSpec, where: str) -> None:
    """The graph's inputs/outputs must be exactly those the manifest declares."""
    for kind, actual, declared in (
        ("input", sess.get_inputs(), graph.inputs),
        ("output", sess.get_outputs(), graph.outputs),
    ):
        got = {a.name: (_ORT_TYPES.get(a.type, a.type), [d if isinstance(d, int) else str(d) for d in a.shape]) for a in actual}
        want = {t.name: (t.dtype, list(t.shape)) for t in declared}
        if set(got) != set(want):
            diff = sorted(set(got) ^ set(want))
            raise BundleError(f"{where}: graph {kind}s differ from the manifest ({', '.join(diff[:4])})")
        for name, (dtype, shape) in want.items():
            gdtype, gshape = got[name]
            fixed_mismatch = any(isinstance(w, int) and g != w for w, g in zip(shape, gshape))
            if gdtype != dtype or len(gshape) != len(shape) or fixed_mismatch:
                raise BundleError(
                    f"{where}: {kind} {name} is {gdtype}{gshape} in the graph but {dtype}{shape} in the manifest"
                )


class OrtEncoder:
    """pixels -> {cross_key.i, cross_value.i} arrays."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {mf.PIXEL_VALUES: pixel_values})
        return dict(zip(self.output_names, outs))


class OrtStepDecoder:
    """A `decoding.StepModel` over the decoder-step graph with a fixed-length, reused cache."""

    def __init__(self, session: ort.InferenceSession, arch: mf.Architecture, graph: mf.GraphSpec) -> None:
        self.session = session
        dtypes = {t.name: t.dtype for t in graph.inputs}
        self.cache_dtype = np.dtype(dtypes[mf.past_key(0)])  # float16 graphs keep a float16 cache
        self.arch = arch
        self.layers = arch.decoder_layers
        self.output_names = [mf.LOGITS] + [n for i in range(self.layers) for n in (mf.new_key(i), mf.new_value(i))]
        self.cross: dict[str, np.ndarray] = {}
        self._encoded: dict[str, np.ndarray] = {}
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._step = np.zeros(1, dtype=np.int64)

    def set_encoded(self, encoded: dict[str, np.ndarray]) -> None:
        """Cross K/V of a batch of images, as the encoder produced them."""
        self._encoded = encoded

    def begin(self, rows: np.ndarray, max_steps: int) -> None:
        n = len(rows)
        same = n == next(iter(self._encoded.values())).shape[0] and np.array_equal(rows, np.arange(n))
        # Beams: each image's cross K/V is expanded to its beams once per caption, never recomputed.
        self.cross = self._encoded if same else {k: np.ascontiguousarray(v[rows]) for k, v in self._encoded.items()}
        h, d = self.arch.decoder_heads, self.arch.head_dim
        cache_len = max(1, max_steps)
        if not self._keys or self._keys[0].shape != (n, h, d, cache_len):
            # reallocated only when the batch x beams or the caption length changes
            self._keys = [np.zeros((n, h, d, cache_len), self.cache_dtype) for _ in range(self.layers)]
            self._values = [np.zeros((n, h, cache_len, d), self.cache_dtype) for _ in range(self.layers)]
        self._feeds = dict(self.cross)
        for i in range(self.layers):
            self._feeds[mf.past_key(i)] = self._keys[i]
            self._feeds[mf.past_value(i)] = self._values[i]

    def step(self, tokens: np.ndarray, step: int) -> np.ndarray:
        self._step[0] = step
        self._feeds[mf.INPUT_IDS] = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1)
        self._feeds[mf.STEP] = self._step
        outs = self.session.run(self.output_names, self._feeds)
        if step < self._keys[0].shape[-1]:
            for i in range(self.layers):
                self._keys[i][:, :, :, step] = outs[1 + 2 * i][:, :, :, 0]
                self._values[i][:, :, step, :] = outs[2 + 2 * i][:, :, 0, :]
        self._filled = step + 1
        return outs[0]

    def reorder(self, src_rows: np.ndarray) -> None:
        n = self._filled
        for i in range(self.layers):
            self._keys[i][:, :, :, :n] = self._keys[i][src_rows, :, :, :n]
            self._values[i][:, :, :n, :] = self._values[i][src_rows, :, :n, :]
