#!/usr/bin/env bash
# The GPU path in one command: detects an NVIDIA GPU and CUDA, loads onnxruntime-gpu, checks token
# parity of the GPU backends with the CPU fp32 path (the demo model and one tiny model per family,
# fp32 and fp16), times edgecap-bench on the CUDA backend (the demo and the ViT-GPT-2-base geometry,
# batch 1 and 8, greedy and beam 4) beside PyTorch on the GPU where torch sees CUDA, runs the GPU
# tests, and writes OUT/gpu-check.json and OUT/gpu-check.md (bench/gpu_check.py does the work).
#
#   bash bench/gpu_check.sh                      # OUT=bench/results/gpu-check, BUDGET=420 s
#
# Without a GPU it prints "no GPU: nothing checked", writes nothing and exits 0: nothing was checked,
# so nothing passed. Where TensorRT is absent its rows say so and are skipped.
#
# onnxruntime-gpu: used if this Python's onnxruntime has the CUDA provider; otherwise installed
# (--no-deps, into $EDGECAP_GPU_SITE, default /tmp/edgecap-gpu-site, put first on PYTHONPATH) from
# $ORT_GPU_WHEEL, or from the pieces of a wheel in .ort-parts/part.* (docs/gpu.md: a machine that
# cannot download receives the 256 MB wheel in pieces; $ORT_GPU_WHEEL_NAME names the whole). The
# CUDA libraries come from the Python's nvidia-* packages (their lib folders go on LD_LIBRARY_PATH).
# It needs the checkout only: edgecap and the exporter are imported from it, not installed.
#
# Environment: OUT, BUDGET (seconds for everything after the set-up; the check is sized to fit one
# call of under 8 minutes), PYTHON (default python3), ORT_GPU_WHEEL, ORT_GPU_WHEEL_NAME,
# EDGECAP_GPU_SITE, BUNDLES (prebuilt bundles instead of exporting here, for a device without
# torch/transformers). Exit status: 0 every phase ran and passed, 1 otherwise, 0 with no GPU.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/gpu-check}
BUDGET=${BUDGET:-420}
SITE=${EDGECAP_GPU_SITE:-/tmp/edgecap-gpu-site}
WHEEL_NAME=${ORT_GPU_WHEEL_NAME:-onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl}

gpu_present() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    return 0
  fi
  [ -e /etc/nv_tegra_release ]  # a Jetson: an integrated GPU and no nvidia-smi
}

if ! gpu_present; then
  echo "no GPU: nothing checked"
  exit 0
fi

say() { echo "gpu_check: $*" >&2; }
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >&2

# this checkout's edgecap and exporter, whatever else the Python has installed
PKGS=$(mktemp -d "${TMPDIR:-/tmp}/edgecap-gpu-pkgs.XXXXXX")
trap 'rm -rf "$PKGS"' EXIT
ln -s "$PWD/edgecap" "$PKGS/edgecap"
ln -s "$PWD/export" "$PKGS/edgecap_export"
export PYTHONPATH="$PKGS${PYTHONPATH:+:$PYTHONPATH}"

has_ort_cuda() {
  "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null
}

if ! has_ort_cuda; then
  wheel=${ORT_GPU_WHEEL:-}
  if [ -z "$wheel" ] && compgen -G ".ort-parts/part.*" >/dev/null; then
    wheel="${TMPDIR:-/tmp}/$WHEEL_NAME"
    cat .ort-parts/part.* >"$wheel"
    say "reassembled $wheel from $(ls .ort-parts/part.* | wc -l) pieces ($(du -h "$wheel" | cut -f1))"
  fi
  if [ -n "$wheel" ]; then
    "$PY" -m zipfile -t "$wheel" >/dev/null 2>&1 || { say "$wheel is not a whole wheel (a piece missing?)"; exit 1; }
    "$PY" -m pip install -q --no-deps --no-index --target "$SITE" "$wheel" || { say "pip could not install $wheel"; exit 1; }
    export PYTHONPATH="$PKGS:$SITE${PYTHONPATH#"$PKGS"}"
  fi
fi

# the CUDA, cuBLAS and cuDNN libraries of the nvidia-* pip packages (what torch uses too)
libs=$("$PY" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
print(":".join(sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))})))
EOF
)
[ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if ! has_ort_cuda; then
  say "a GPU is here, but no onnxruntime with CUDAExecutionProvider: install onnxruntime-gpu (pip uninstall"
  say "onnxruntime; pip install 'edgecap[gpu]'), or give its wheel as ORT_GPU_WHEEL or in pieces in .ort-parts/"
  say "NOT PASSED: nothing on the GPU was checked"
  exit 1
fi

args=(--out "$OUT" --budget "$BUDGET")
[ -n "${BUNDLES:-}" ] && args+=(--bundles "$BUNDLES")
PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py "${args[@]}"
