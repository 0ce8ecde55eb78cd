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
    # Each session has its own thread pool whose idle threads spin. After the decoder's last step its
    # threads still spin while the encoder runs, and the reverse. The encoder's kernels are long, so
    # waking its threads costs nothing: it does not spin (measured on 2 vCPUs, ViT-base + GPT-2 int8,
    # back to back: decode 165 -> 142 ms). A process-wide pool would fix the other half (encoder
    # 63 -> 46 ms) but forces every ONNX Runtime session in the user's process onto it.
    spin: bool = True
    # How ONNX Runtime allocates intermediate tensors (bench/memory.py measures each; MEMORY_MODES):
    # "arena" its default (a BFC arena that keeps what it grew, plus memory patterns: buffers planned
    # per input shape), "arena-no-pattern" the arena without the patterns, "no-arena" plain
    # allocations, returned after each run.
    memory: str = "arena"


MEMORY_MODES = ("arena", "arena-no-pattern", "no-arena")


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
    so.log_severity_level = 3
    if opts.threads:
        so.intra_op_num_threads = opts.threads
        so.inter_op_num_threads = 1
    if not opts.spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if opts.memory not in MEMORY_MODES:
        raise EdgecapError(f"unknown memory mode {opts.memory!r}; available: {', '.join(MEMORY_MODES)}")
    if opts.memory == "no-arena":
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    elif opts.memory == "arena-no-pattern":
        so.enable_mem_pattern = False
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
    """pixels -> {cross_key.i, cross_value.i} arrays.

    A graph whose pixel_values take one image (the fused encoders, manifest.FusedGraphs) runs once per
    image, each run writing its slice of preallocated batch outputs through IO binding (no copy)."""

    def __init__(self, session: ort.InferenceSession, graph: mf.GraphSpec | None = None) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        pixels = next((t for t in graph.inputs if t.name == mf.PIXEL_VALUES), None) if graph is not None else None
        self.one_image = pixels is not None and pixels.shape[0] == 1
        self.output_shapes = {t.name: t.shape for t in graph.outputs} if graph is not None else {}

    def __call__(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        return self.run({mf.PIXEL_VALUES: pixel_values})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph on all its inputs (pixels, and the prompt's ids for an encoder that reads one)."""
        if not self.one_image:
            outs = self.session.run(self.output_names, feeds)
            return dict(zip(self.output_names, outs))
        n = len(feeds[mf.PIXEL_VALUES])
        out = {name: np.empty((n, *self.output_shapes[name][1:]), np.float32) for name in self.output_names}
        for i in range(n):
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value[i : i + 1]))
            for name, arr in out.items():
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr[i : i + 1]))
            self.session.run_with_iobinding(binding)
        return out


CACHE_MIN = 16


def cache_bucket(needed: int, max_steps: int) -> int:
    """Cache slots for `needed` tokens: the next power of two from CACHE_MIN, capped at max_steps.

    A step's attention then costs what the tokens so far need (step 10 of a 3,584-token limit
    attends over 16 slots, not 3,584), and the few sizes keep shape-specialised backends
    (TensorRT profiles, CUDA graphs) to a handful of shapes. Growing copies the cache once per
    doubling: O(total) copying over a caption.
    """
    size = CACHE_MIN
    while size < needed:
        size *= 2
    return max(1, min(size, max_steps))


class OrtStepDecoder:
    """A `decoding.StepModel` over the decoder-step graph with a fixed-length, reused cache.

    Every input and output is bound once per caption (ONNX Runtime IO binding over numpy buffers,
    no copies): a step only writes the token ids in place, runs, and copies the new key/value into
    slot `step`. Re-binding ~50 tensors per step through `session.run` costs more than the
    attention itself at batch 1.
    """

    def __init__(self, session: ort.InferenceSession, arch: mf.Architecture, graph: mf.GraphSpec) -> None:
        self.session = session
        dtypes = {t.name: t.dtype for t in graph.inputs}
        # The attention-emitting variant (manifest GraphPair.decoder_attentions): which layer's
        # cross-attention `cross_attentions()` returns, and whether heads are averaged.
        outputs = {t.name for t in graph.outputs}
        self.emits_attentions = all(mf.cross_attention(i) in outputs for i in range(arch.decoder_layers))
        # A fused step (manifest.FusedGraphs) appends its key/value to the cache itself, in place: its
        # present_key.i outputs are bound to the past_key.i buffers, and keys are [.., slots, head_dim]
        # like values. A plain step returns them (new_key.i) for the runtime to write; its keys are
        # transposed, [.., head_dim, slots].
        self.in_place = mf.present_key(0) in outputs
        self._key_slot_axis = 2 if self.in_place else 3
        self.attention_layer = arch.decoder_layers - 1
        self.attention_heads = "mean"
        self.cache_dtype = np.dtype(dtypes[mf.past_key(0)])  # float16 graphs keep a float16 cache
        self.arch = arch
        self.layers = arch.decoder_layers
        self.cross: dict[str, np.ndarray] = {}
        self._encoded: dict[str, np.ndarray] = {}
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._feeds: dict[str, np.ndarray] = {}  # what is bound: inputs by name (read by calibration)
        self._filled = 0

    def set_encoded(self, encoded: dict[str, np.ndarray]) -> None:
        """Cross K/V of a batch of images, as the encoder produced them."""
        self._encoded = encoded

    def begin(self, rows: np.ndarray, max_steps: int) -> None:
        n = len(rows)
        images = next(iter(self._encoded.values())).shape[0]
        beams = n // images
        if n % images or not np.array_equal(rows, np.repeat(np.arange(images), beams)):
            raise ValueError("decoder rows must be image-major: each image's beams together, in image order")
        # Beams share their image's cross K/V: the graph attends with all of an image's beams at
        # once, so nothing is copied per beam (and nothing is ever recomputed).
        self.cross = {k: np.ascontiguousarray(v) for k, v in self._encoded.items()}
        self.max_steps = max(1, max_steps)
        cache_len = cache_bucket(1, self.max_steps)
        if not self._keys or self._keys[0].shape[0] != n or self._values[0].shape[2] != cache_len:
            self._allocate(n, cache_len)
        else:
            self._bind()  # new cross K/V
        self._filled = 0

    def _slots(self, axis: int, stop: int, rows=slice(None)) -> tuple:
        """Index of the first `stop` cache slots (of `rows`) along a cache tensor's slot axis."""
        return (rows, slice(None)) + (slice(None),) * (axis - 2) + (slice(0, stop),)

    def _allocate(self, n: int, cache_len: int, keep: int = 0) -> None:
        """(Re)allocate the cache for n rows and cache_len slots, keeping the first `keep` slots, and bind."""
        h, d = self.arch.decoder_heads, self.arch.head_dim
        key_shape = (n, h, cache_len, d) if self.in_place else (n, h, d, cache_len)
        keys = [np.zeros(key_shape, self.cache_dtype) for _ in range(self.layers)]
        values = [np.zeros((n, h, cache_len, d), self.cache_dtype) for _ in range(self.layers)]
        kept_k, kept_v = self._slots(self._key_slot_axis, keep), self._slots(2, keep)
        for i in range(min(self.layers, len(self._keys)) if keep else 0):
            keys[i][kept_k] = self._keys[i][kept_k]
            values[i][kept_v] = self._values[i][kept_v]
        self._keys, self._values = keys, values
        if getattr(self, "_logits", None) is None or self._logits.shape[0] != n:
            if not self.in_place:
                self._new_keys = [np.empty((n, h, d, 1), self.cache_dtype) for _ in range(self.layers)]
                self._new_values = [np.empty((n, h, 1, d), self.cache_dtype) for _ in range(self.layers)]
            self._logits = np.empty((n, self.arch.vocab_size), np.float32)
            self._ids = np.zeros((n, 1), np.int64)
            self._step = np.zeros(1, np.int64)
        self._bind()

    def _bind(self) -> None:
        if self.emits_attentions:  # as long as the encoded sequence (Florence-2's varies with the prompt)
            shape = (len(self._ids), self.arch.decoder_heads, self.cross[mf.cross_value(0)].shape[2])  # S, in both forms
            if getattr(self, "_attentions", None) is None or self._attentions[0].shape != shape:
                self._attentions = [np.empty(shape, np.float32) for _ in range(self.layers)]
        self._feeds = {**self.cross, mf.INPUT_IDS: self._ids, mf.STEP: self._step}
        for i in range(self.layers):
            self._feeds[mf.past_key(i)] = self._keys[i]
            self._feeds[mf.past_value(i)] = self._values[i]
        outputs = {mf.LOGITS: self._logits}
        for i in range(self.layers):
            if not self.in_place:
                outputs[mf.new_key(i)] = self._new_keys[i]
                outputs[mf.new_value(i)] = self._new_values[i]
            if self.emits_attentions:  # every layer: an unbound graph output is an error
                outputs[mf.cross_attention(i)] = self._attentions[i]
        self._binding = self.session.io_binding()
        self._bound = []  # OrtValues alias the numpy buffers: keep both alive while bound
        values = {}
        for name, arr in self._feeds.items():
            values[name] = ort.OrtValue.ortvalue_from_numpy(arr)
            self._binding.bind_ortvalue_input(name, values[name])
        if self.in_place:  # the step writes this token's key/value into the cache it reads
            for i in range(self.layers):
                self._binding.bind_ortvalue_output(mf.present_key(i), values[mf.past_key(i)])
                self._binding.bind_ortvalue_output(mf.present_value(i), values[mf.past_value(i)])
        self._bound = list(values.values())
        for name, arr in outputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            self._binding.bind_ortvalue_output(name, value)
            self._bound.append(value)

    def step(self, tokens: np.ndarray, step: int) -> np.ndarray:
        if step >= self._values[0].shape[2] and step < self.max_steps:
            # Grow to the next bucket: a step attends over the slots it has, not max_new_tokens'.
            self._allocate(len(self._ids), cache_bucket(step + 1, self.max_steps), keep=self._filled)
        self._ids[:, 0] = tokens
        self._step[0] = step
        self.session.run_with_iobinding(self._binding)
        if not self.in_place and step < self._keys[0].shape[-1]:
            for i in range(self.layers):
                self._keys[i][:, :, :, step] = self._new_keys[i][:, :, :, 0]
                self._values[i][:, :, step, :] = self._new_values[i][:, :, 0, :]
        self._filled = step + 1
        return self._logits.copy()

    def cross_attentions(self) -> np.ndarray:
        """The last step's cross-attention at `attention_layer`: [rows, S] averaged over heads
        (attention_heads "mean", in float32 as torch averages), or [rows, heads, S] ("all")."""
        att = self._attentions[self.attention_layer]
        return att.mean(axis=1, dtype=np.float32) if self.attention_heads == "mean" else att.copy()

    def reorder(self, src_rows: np.ndarray) -> None:
        n = self._filled
        kept_k, kept_v = self._slots(self._key_slot_axis, n), self._slots(2, n)
        from_k, from_v = self._slots(self._key_slot_axis, n, src_rows), self._slots(2, n, src_rows)
        for i in range(self.layers):
            self._keys[i][kept_k] = self._keys[i][from_k]
            self._values[i][kept_v] = self._values[i][from_v]
