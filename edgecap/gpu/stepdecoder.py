"""A `decoding.StepModel` whose KV cache and cross K/V stay in device memory.

Only token ids and the step index go to the device and only logits come back per step. The
self-attention cache is the fixed-length layout of the decoder-step graph (`manifest.past_key`):
allocated once per (rows, cache_len) and reused across captions, each step's new key/value written
into slot `step` by one strided device copy per tensor (`devmem.write_slot`).

Beam reordering gathers rows into a second ("ping-pong") set of cache buffers and swaps; in-place
reordering is unsafe because a row can be both a source and a destination. The swap changes the
cache addresses, so the runner rebinds (TensorRT: two CUDA graphs per shape at most).

What differs between ONNX Runtime and TensorRT is a `StepRunner`: how memory is allocated, how
tensors are bound and how one step runs.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from .. import manifest as mf
from .cudart import Cuda
from .devmem import DeviceTensor, gather_rows, write_slot

log = logging.getLogger(__name__)

KEY_AXIS, VALUE_AXIS = 3, 2  # the cache-slot axis of past_key [n,h,d,T] and past_value [n,h,T,d]


class StepRunner(Protocol):
    cuda: Cuda
    stream: int
    # True when the runner's kernels run on `stream`: our copies are then ordered after them and
    # before the next step without a host synchronisation.
    shares_stream: bool

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        """Uninitialised device memory."""

    def check_shape(self, rows: int, cache_len: int) -> None:
        """Raise (or warn) when rows x cache_len is outside what the engine was built for."""

    def bind(self, tensors: dict[str, DeviceTensor], rows: int, cache_len: int) -> None:
        """Bind the past/cross inputs and new_key/new_value outputs; called when an address changes."""

    def run(self, tokens: np.ndarray, step: int) -> np.ndarray:
        """One decoder step for tokens [rows, 1] int64: next-token logits [rows, vocab] float32 on the host.

        The returned array may be reused by the next call.
        """


class DeviceStepDecoder:
    """Drives a `StepRunner` through `decoding.greedy` / `decoding.beam_search`."""

    def __init__(self, runner: StepRunner, arch: mf.Architecture, graph: mf.GraphSpec) -> None:
        self.runner = runner
        self.cuda, self.stream = runner.cuda, runner.stream
        dtypes = {t.name: t.dtype for t in graph.inputs}
        self.cache_dtype = np.dtype(dtypes[mf.past_key(0)])
        self.layers = arch.decoder_layers
        self.heads, self.head_dim = arch.decoder_heads, arch.head_dim
        self._encoded: dict[str, DeviceTensor] = {}
        self._expanded: dict[str, DeviceTensor] = {}
        self.cross: dict[str, DeviceTensor] = {}
        self._sets: list[tuple[list[DeviceTensor], list[DeviceTensor]] | None] = [None, None]
        self._cur = 0
        self._new: tuple[list[DeviceTensor], list[DeviceTensor]] = ([], [])
        self._shape: tuple[int, int] | None = None  # (rows, cache_len) the buffers are sized for
        self._filled = 0

    def set_encoded(self, encoded: dict[str, DeviceTensor]) -> None:
        """Cross K/V of a batch of images, as the device encoder produced them."""
        self._encoded = encoded

    # --- StepModel ------------------------------------------------------------------------------

    def begin(self, rows: np.ndarray, max_steps: int) -> None:
        n = len(rows)
        cache_len = max(1, max_steps)
        self.runner.check_shape(n, cache_len)
        batch = next(iter(self._encoded.values())).shape[0]
        if n == batch and np.array_equal(rows, np.arange(n)):
            self.cross = self._encoded
        else:
            # Beams: each image's cross K/V is expanded to its beams once per caption, on the device.
            for name, t in self._encoded.items():
                want = (n,) + tuple(t.shape[1:])
                if name not in self._expanded or self._expanded[name].shape != want:
                    self._expanded[name] = self.runner.alloc(want, t.dtype)
                gather_rows(self.cuda, self._expanded[name], t, rows, self.stream)
            self.cross = dict(self._expanded)
        if self._shape != (n, cache_len):
            # reallocated only when batch x beams or the caption length changes
            self._sets = [self._alloc_cache(n, cache_len), None]
            h, d = self.heads, self.head_dim
            self._new = (
                [self.runner.alloc((n, h, d, 1), self.cache_dtype) for _ in range(self.layers)],
                [self.runner.alloc((n, h, 1, d), self.cache_dtype) for _ in range(self.layers)],
            )
            self._shape = (n, cache_len)
        self._cur = 0
        self._filled = 0
        self._bind()
        self.cuda.stream_sync(self.stream)

    def step(self, tokens: np.ndarray, step: int) -> np.ndarray:
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1)
        logits = self.runner.run(ids, step)
        keys, values = self._sets[self._cur]  # type: ignore[misc]
        if step < self._shape[1]:  # type: ignore[index]
            new_k, new_v = self._new
            for i in range(self.layers):
                write_slot(self.cuda, keys[i], new_k[i], KEY_AXIS, step, self.stream)
                write_slot(self.cuda, values[i], new_v[i], VALUE_AXIS, step, self.stream)
            if not self.runner.shares_stream:
                self.cuda.stream_sync(self.stream)
        self._filled = step + 1
        return logits

    def reorder(self, src_rows: np.ndarray) -> None:
        src_rows = np.asarray(src_rows, dtype=np.int64)
        if np.array_equal(src_rows, np.arange(len(src_rows))):
            return  # nothing moves (common when one beam dominates): no copies, no rebinding
        other = 1 - self._cur
        if self._sets[other] is None:
            self._sets[other] = self._alloc_cache(*self._shape)  # type: ignore[misc]
        src_k, src_v = self._sets[self._cur]  # type: ignore[misc]
        dst_k, dst_v = self._sets[other]  # type: ignore[misc]
        filled = min(self._filled, self._shape[1])  # type: ignore[index]
        for i in range(self.layers):
            gather_rows(self.cuda, dst_k[i], src_k[i], src_rows, self.stream, KEY_AXIS, filled)
            gather_rows(self.cuda, dst_v[i], src_v[i], src_rows, self.stream, VALUE_AXIS, filled)
        self._cur = other
        self._bind()
        if not self.runner.shares_stream:
            self.cuda.stream_sync(self.stream)

    # --- internals --------------------------------------------------------------------------------

    def _alloc_cache(self, n: int, cache_len: int) -> tuple[list[DeviceTensor], list[DeviceTensor]]:
        h, d = self.heads, self.head_dim
        keys = [self.runner.alloc((n, h, d, cache_len), self.cache_dtype) for _ in range(self.layers)]
        values = [self.runner.alloc((n, h, cache_len, d), self.cache_dtype) for _ in range(self.layers)]
        # Masked slots still enter the graph's MatMuls (scores + -inf bias, probabilities 0 x value):
        # uninitialised memory could hold NaN bit patterns, and NaN survives both. Zero it once.
        for t in keys + values:
            self.cuda.memset(t.ptr, t.nbytes, self.stream)
        return keys, values

    def _bind(self) -> None:
        keys, values = self._sets[self._cur]  # type: ignore[misc]
        new_k, new_v = self._new
        tensors = dict(self.cross)
        for i in range(self.layers):
            tensors[mf.past_key(i)] = keys[i]
            tensors[mf.past_value(i)] = values[i]
            tensors[mf.new_key(i)] = new_k[i]
            tensors[mf.new_value(i)] = new_v[i]
        self.runner.bind(tensors, *self._shape)  # type: ignore[misc]
