#!/usr/bin/env bash
# Make the environment edgecap-bench's peers run in (--peer-python): PyTorch, Optimum (ONNX Runtime)
# and optimum-intel (OpenVINO) on transformers 4.57.x, the line both pin (optimum-onnx 0.1 and
# optimum-intel 1.27 require transformers < 4.58), beside edgecap itself.
#
#   bash bench/peer_venv.sh [VENV]          # default: .bench-venv-peers (gitignored)
#   edgecap-bench ... --compare pytorch,optimum,openvino --peer-python .bench-venv-peers/bin/python
#
# TORCH names the torch requirement: the default pins the CPU build these machines keep on local
# disk; elsewhere pass your own (a plain `torch` from the default index is a multi-GB CUDA build).
# optimum-intel is pinned to 1.27: the newest, 2.x, needs optimum 2.3, which optimum-onnx 0.1 (the
# Optimum peer) refuses; pip would otherwise silently pick one and drop the other.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.bench-venv-peers}
python -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "${TORCH:-torch==2.13.0}" 'transformers==4.57.*' \
  'optimum-onnx[onnxruntime]==0.1.*' 'optimum-intel[openvino]==1.27.*' -e '.[export]'
"$venv/bin/python" - <<'EOF'
import openvino, optimum.intel, optimum.onnxruntime, transformers  # noqa: F401  (fails loudly if not)
print(f"peer environment ready: transformers {transformers.__version__}, openvino {openvino.__version__}")
EOF
