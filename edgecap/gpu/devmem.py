"""Device tensors and the two copies the KV cache needs: write one slot, gather rows.

A `DeviceTensor` is a pointer, a shape and a dtype, plus an `owner` that keeps the memory alive (an
ONNX Runtime `OrtValue`, or a `DeviceBuffer` from `cudaMalloc`). Both backends use them, so the
cache logic below is written once and is tested on CPU with host memory standing in for the device.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cudart import D2D, Cuda


@dataclass(eq=False)
class DeviceTensor:
    """A C-contiguous tensor in device memory. `shape[0]` is the batch (row) dimension."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: Any = None  # whatever must stay alive for `ptr` to stay valid

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0

    def __repr__(self) -> str:
        return f"DeviceTensor(0x{self.ptr:x}, {self.shape}, {np.dtype(self.dtype).name})"


class DeviceBuffer:
    """`cudaMalloc` memory freed when the buffer is garbage-collected."""

    def __init__(self, cuda: Cuda, nbytes: int) -> None:
        self.ptr = cuda.malloc(nbytes)
        self.nbytes = nbytes
        self._finalizer = weakref.finalize(self, _free, cuda, self.ptr)

    def release(self) -> None:
        self._finalizer()


def _free(cuda: Cuda, ptr: int) -> None:
    try:
        cuda.free(ptr)
    except Exception:  # interpreter shutdown or a dead context: nothing useful to do
        pass


def device_empty(cuda: Cuda, shape: tuple[int, ...], dtype: Any) -> DeviceTensor:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = DeviceBuffer(cuda, nbytes)
    return DeviceTensor(buf.ptr, tuple(int(s) for s in shape), dtype, buf)


def write_slot(cuda: Cuda, cache: DeviceTensor, new: DeviceTensor, axis: int, slot: int, stream: int) -> None:
    """cache[..., slot, ...] = new[..., 0, ...] along `axis`, as one strided 2-D copy.

    Key cache [n, h, d, T] (axis 3) and value cache [n, h, T, d] (axis 2): the slot is a run of
    `inner` contiguous bytes repeated every T*inner bytes, which is exactly cudaMemcpy2D's shape.
    ONNX Runtime's Python API has no strided device copy, hence the CUDA runtime call.
    """
    shape = cache.shape
    expected = shape[:axis] + (1,) + shape[axis + 1 :]
    if tuple(new.shape) != expected or np.dtype(new.dtype) != np.dtype(cache.dtype):
        raise ValueError(f"write_slot: {new!r} does not fit one slot of {cache!r} along axis {axis}")
    if not 0 <= slot < shape[axis]:
        raise ValueError(f"write_slot: slot {slot} outside 0..{shape[axis] - 1}")
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) * np.dtype(cache.dtype).itemsize
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    cuda.copy_2d(cache.ptr + slot * inner, shape[axis] * inner, new.ptr, inner, inner, outer, D2D, stream)


def row_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(dst_start, src_start, count): maximal runs where consecutive destinations read consecutive sources."""
    rows = np.asarray(rows, dtype=np.int64)
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[i - 1] + 1:
            runs.append((start, int(rows[start]), i - start))
            start = i
    return runs


def gather_rows(
    cuda: Cuda,
    dst: DeviceTensor,
    src: DeviceTensor,
    rows: np.ndarray,
    stream: int,
    axis: int | None = None,
    filled: int | None = None,
) -> None:
    """dst[i] = src[rows[i]] for every row i of dst (dst and src must not overlap).

    With `axis`/`filled`, only slots [0, filled) along `axis` are copied: beam reordering moves the
    part of the cache that holds data, not the whole fixed-length buffer.
    """
    if dst.shape[1:] != src.shape[1:] or len(rows) != dst.shape[0] or np.dtype(dst.dtype) != np.dtype(src.dtype):
        raise ValueError(f"gather_rows: cannot gather {len(rows)} rows of {src!r} into {dst!r}")
    rb = src.row_bytes
    partial = axis is not None and filled is not None and filled < src.shape[axis]
    if partial:
        item = np.dtype(src.dtype).itemsize
        inner = int(np.prod(src.shape[axis + 1 :], dtype=np.int64)) * item
        pitch = src.shape[axis] * inner
        per_row = int(np.prod(src.shape[1:axis], dtype=np.int64))
    for d0, s0, count in row_runs(rows):
        if partial:
            if filled > 0:
                cuda.copy_2d(dst.ptr + d0 * rb, pitch, src.ptr + s0 * rb, pitch, filled * inner, count * per_row, D2D, stream)
        else:
            cuda.copy(dst.ptr + d0 * rb, src.ptr + s0 * rb, count * rb, D2D, stream)
