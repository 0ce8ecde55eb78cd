"""Floor estimates for `edgecap-bench`: what this machine's kernels reach, per precision.

Each precision runs its own weight-product kernel: fp32/fp16 MatMul, int8 a per-row-quantized
MatMulInteger (activations quantized per row in-graph, weights per channel), int4 MatMulNBits
(4-bit, block 32, accuracy_level 4), int8-qdq ONNX Runtime's fused Q/DQ MatMul. A floor that used
the fp32 rate for all of them reported an int8 encoder's floor at 3x its measured time. So the
probe graph of each precision (edgecap/data/probe_<precision>.onnx, written by
`python -m edgecap_export.probe` with the exporter's own graph builder and quantizer) is that
kernel on a K x N = 8192 x 8192 weight, and it is timed twice:

- with as many rows as a decoder step multiplies (batch x beams; one row = GEMV, the
  weight-streaming rate a greedy batch-1 step is bound by): weights/s, and GB/s at one row;
- GEMM, 256 rows (about one ViT image's tokens): the compute rate an encoder is bound by.

The graphs ship without their weights (they would be 32-256 MB each): the weights are external
data that is generated here, in memory, and handed to ONNX Runtime as the external file's
contents, so they are ordinary initializers (pre-packed like a bundle's), not session inputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("edgecap.bench")

PROBE_DIR = Path(__file__).parent / "data"
PROBE_K = PROBE_N = 8192
PROBE_GEMM_ROWS = 256
INT4_BLOCK = 32

# The externally stored tensors of each probe graph, in file order: (name, dtype, shape, fill).
# fill: "float" = small signed values, "scale" = small positive values, "int" = any bit pattern.
# export/probe.py writes the graphs to match this table (and fails if they would not).
_BLOCKS = PROBE_K // INT4_BLOCK
PROBE_TENSORS: dict[str, list[tuple[str, str, tuple[int, ...], str]]] = {
    "fp32": [("probe_w", "float32", (PROBE_K, PROBE_N), "float")],
    "fp16": [("probe_w", "float16", (PROBE_K, PROBE_N), "float")],
    "int8": [("probe_w", "int8", (PROBE_K, PROBE_N), "int")],
    "int4": [("probe_w", "uint8", (PROBE_N, _BLOCKS, INT4_BLOCK // 2), "int"),
             ("probe_w_scales", "float32", (PROBE_N, _BLOCKS), "scale")],
    "int8-qdq": [("probe_w", "int8", (PROBE_K, PROBE_N), "int")],
}
PROBE_PRECISIONS = tuple(PROBE_TENSORS)

# Bytes per weight as stored (int4 carries one fp32 scale per block of 32).
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / INT4_BLOCK, "int8-qdq": 1.0}

# The kernel each precision's graphs run: (encoder, decoder). The int4 bundle's encoder is the int8
# one (export/exporter.py), so its encoder floor is the int8 GEMM's.
KERNELS = {"fp32": ("fp32", "fp32"), "fp16": ("fp16", "fp16"), "int8": ("int8", "int8"),
           "int4": ("int8", "int4"), "int8-qdq": ("int8-qdq", "int8-qdq")}


def probe_file(precision: str) -> Path:
    return PROBE_DIR / f"probe_{precision}.onnx"


def probe_data_name(precision: str) -> str:
    """The external-data file name the probe graph refers to (never written to disk)."""
    return f"probe_{precision}.bin"


def probe_layout(precision: str) -> list[tuple[str, int, int]]:
    """(name, offset, length) of each external tensor: packed back to back, 64-byte aligned."""
    out, offset = [], 0
    for name, dtype, shape, _ in PROBE_TENSORS[precision]:
        length = int(np.prod(shape)) * np.dtype(dtype).itemsize
        out.append((name, offset, length))
        offset += -(-length // 64) * 64
    return out


def probe_data(precision: str, seed: int = 0) -> np.ndarray:
    """The probe's external file contents: random weights of the right types (no NaN, no denormal)."""
    rng = np.random.default_rng(seed)
    layout = probe_layout(precision)
    buf = np.zeros(layout[-1][1] + layout[-1][2], dtype=np.uint8)
    for (name, dtype, shape, fill), (_, offset, length) in zip(PROBE_TENSORS[precision], layout):
        n = int(np.prod(shape))
        if fill == "int":
            values = rng.integers(0, 256, n, dtype=np.uint8)
            if dtype == "int8":  # symmetric weights: -127..127, as the exporter writes them
                values = np.clip(values.view(np.int8), -127, 127)
        elif fill == "scale":
            values = (rng.random(n, dtype=np.float32) * 0.01 + 0.001).astype(dtype)
        else:
            values = ((rng.random(n, dtype=np.float32) - 0.5) * 0.1).astype(dtype)
        buf[offset:offset + length] = np.ascontiguousarray(values).view(np.uint8)
    return buf


def _session(precision: str, threads: int | None, on_gpu: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3  # the fp16 probe's CPU fallback warnings are not the user's business
    if on_gpu:  # a node the GPU cannot run would be timed on the CPU: no floor beats a wrong one
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    data = probe_data(precision)
    so.add_external_initializers_from_files_in_memory([probe_data_name(precision)], [data], [data.nbytes])
    providers = ["CUDAExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(probe_file(precision)), so, providers=providers)
    if on_gpu and "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError("the CUDA provider is not available")
    return sess


def _best_seconds(sess, rows: int, reps: int, on_gpu: bool) -> float:
    """Fastest of `reps` calls (a floor is a best case; the minimum is robust to a busy machine)."""
    import onnxruntime as ort

    device = "cuda" if on_gpu else "cpu"
    a = np.random.default_rng(rows).standard_normal((rows, PROBE_K)).astype(np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("a", ort.OrtValue.ortvalue_from_numpy(a, device, 0))
    binding.bind_output("c", device)
    sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_kernel(precision: str, threads: int | None, backend: str = "cpu", rows: tuple[int, ...] = (1,)) -> dict:
    """One precision's kernel: its GEMM rate at 256 rows (GFLOP/s), and for each row count a decoder
    step multiplies (batch x beams), the weights/s it streams; at one row also as GB/s of weights."""
    on_gpu = backend != "cpu"
    sess = _session(precision, threads, on_gpu)
    weights = PROBE_K * PROBE_N
    by_rows = {str(m): weights / _best_seconds(sess, m, 10, on_gpu) / 1e9 for m in sorted({1, *rows})}
    gemm = _best_seconds(sess, PROBE_GEMM_ROWS, 3, on_gpu)
    return {
        "read_gb_per_s": by_rows["1"] * BYTES_PER_WEIGHT[precision],
        "gweights_per_s": by_rows["1"],
        "gweights_per_s_by_rows": by_rows,
        "matmul_gflop_per_s": 2 * PROBE_GEMM_ROWS * weights / gemm / 1e9,
    }


def measure_floors(threads: int | None, backend: str = "cpu", precisions: tuple[str, ...] = ("fp32",),
                   rows: tuple[int, ...] = (1,)) -> dict:
    """{"kernels": {kernel: rates}, plus fp32's read_gb_per_s/matmul_gflop_per_s at the top level}.

    Every kernel the given precisions run is probed, at every row count in `rows`; a kernel this
    provider cannot run (say int8 MatMulInteger on CUDA) is logged and left out, and rows that
    need it get no floor.
    """
    needed = ["fp32"] + [k for p in precisions for k in KERNELS.get(p, ())]
    kernels = {}
    for kernel in dict.fromkeys(needed):
        try:
            kernels[kernel] = measure_kernel(kernel, threads, backend, rows)
        except Exception as exc:  # an unsupported op or provider: no floor for it, not a failed bench
            log.warning("%s floor probe failed on %s: %s", kernel, backend, str(exc).strip().splitlines()[0][:200])
    out: dict = {"kernels": kernels}
    if "fp32" in kernels:
        out["read_gb_per_s"] = kernels["fp32"]["read_gb_per_s"]
        out["matmul_gflop_per_s"] = kernels["fp32"]["matmul_gflop_per_s"]
    return out


def floor_estimate(arch, precision: str, batch: int, beams: int, floors: dict) -> dict:
    """Encoder ms = batch x FLOPs / the encoder kernel's GEMM rate. Decoder step ms = the step's
    weights / the rate the decoder kernel multiplies batch x beams rows by a weight matrix at: the
    weight products alone, with nothing else a step does. None where the kernel was not measured."""
    enc_kernel, dec_kernel = KERNELS.get(precision, ("fp32", "fp32"))
    kernels = floors.get("kernels", {})
    enc, dec = kernels.get(enc_kernel), kernels.get(dec_kernel)
    out: dict = {"encoder_ms": None, "decoder_step_ms": None}
    if enc:
        out["encoder_ms"] = batch * arch.encoder_flops / (enc["matmul_gflop_per_s"] * 1e9) * 1000
    rate = dec and dec["gweights_per_s_by_rows"].get(str(batch * beams))
    if rate:
        out["decoder_step_ms"] = arch.decoder_step_params / (rate * 1e9) * 1000
    return out
