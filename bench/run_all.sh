#!/usr/bin/env bash
# Reproduce every table in bench/RESULTS.md in one go. Run it alone on a quiet machine: any other
# load moves every number (a full run is about half an hour on 2 cores).
#
#   bash bench/run_all.sh                # every section
#   bash bench/run_all.sh main demo      # some: main (edgecap vs PyTorch/Optimum/OpenVINO, the
#                                        #   target table, kernel floors), feed, demo (EVAL.md),
#                                        #   florence (Florence-2-base's geometry, issue 21)
#   QUICK=1 bash bench/run_all.sh        # smoke run: the demo model, tiny sizes, a few minutes;
#                                        #   checks the script, its numbers mean nothing
#
# Writes bench/results/: the bench's JSON and PNG, <name>.md (the markdown tables RESULTS.md
# quotes, made by bench/report.py from the JSON), <section>.log (every command's output) and
# summary.txt. Environment: THREADS (default 2), PEER_PYTHON (default .bench-venv-peers/bin/python,
# made by bench/peer_venv.sh when missing), OUT (default bench/results).
# Exit status: 0 when every section ran; 1 when one failed (the others still run; see its log).
# A peer that cannot run on the model is a "failed: ..." row in the table, not a failed section.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
THREADS=${THREADS:-2}
PEER_PYTHON=${PEER_PYTHON:-.bench-venv-peers/bin/python}
QUICK=${QUICK:-}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgecap-run-all.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(main feed demo florence)
status=0

note() { echo "run_all: $*" | tee -a "$OUT/summary.txt" >&2; }
run() {  # run CMD... with its output appended to the section log; rc 1 from edgecap-bench = a failed row
  echo "+ $*" >>"$log"
  "$@" >>"$log" 2>&1
}

machine() {
  {
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    grep -m1 "model name" /proc/cpuinfo || uname -m
    echo "cpus: $(nproc); ISA: $(grep -m1 -o -w -E 'amx_int8|avx512_vnni|avx_vnni|avx512f|avx2|asimddp|asimd' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    python -c "import onnxruntime, numpy, sys; print('python', sys.version.split()[0], 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
    "$PEER_PYTHON" -c "import torch, transformers, openvino; from importlib.metadata import version as v; print('peers: torch', torch.__version__, 'transformers', transformers.__version__, 'optimum', v('optimum'), 'optimum-onnx', v('optimum-onnx'), 'optimum-intel', v('optimum-intel'), 'openvino', openvino.__version__)" 2>/dev/null \
      || echo "peers: $PEER_PYTHON not usable"
  } >"$OUT/machine.txt"
}

section_main() {
  if [ ! -x "$PEER_PYTHON" ] && [ "$PEER_PYTHON" = .bench-venv-peers/bin/python ]; then
    note "making the peer environment (bench/peer_venv.sh)"
    run bash bench/peer_venv.sh .bench-venv-peers || note "peer environment failed; peers will be failed rows"
  fi
  local name=vit-gpt2-base-cpu
  local args=(--synthetic vit-gpt2-base --batch-sizes 1,8 --beams 1,4 --new-tokens 16 --warmup 1 --repeat 5)
  if [ -n "$QUICK" ]; then
    name=quick-demo-cpu
    args=(--model models/demo/checkpoint --workdir "$WORK/bench" --batch-sizes 1,2 --beams 1,2 --new-tokens 4 --warmup 0 --repeat 1)
  fi
  run edgecap-bench "${args[@]}" --precision fp32,int8,int4,fp16 --graphs default,plain --compare pytorch,optimum,openvino \
    --peer-python "$PEER_PYTHON" --threads "$THREADS" --json "$OUT/$name.json" --plot "$OUT/$name.png"
  local rc=$?
  [ $rc -le 1 ] || return $rc  # 1: some engine is a failed row, still a result
  run python bench/report.py "$OUT/$name.json" || return 1
  python bench/report.py "$OUT/$name.json" >"$OUT/$name.md"
}

section_florence() {  # issue 21: Florence-2-base's geometry, its <CAPTION> task, 20 tokens, greedy and beam 3
  local name=florence2-base-cpu
  local args=(--synthetic florence2-base --batch-sizes 1 --beams 1,3 --new-tokens 20 --warmup 1 --repeat 5)
  if [ -n "$QUICK" ]; then  # the same path at toy size (tests/tiny_florence2.py's geometry)
    name=quick-florence2-cpu
    run python -c "import sys; sys.path.insert(0, 'tests'); import tiny_florence2, pathlib; \
tiny_florence2.build(pathlib.Path('$WORK/florence2'))" || return 1
    args=(--model "$WORK/florence2" --workdir "$WORK/bench" --batch-sizes 1 --beams 1,3 --new-tokens 4 --warmup 0 --repeat 1)
  fi
  run edgecap-bench "${args[@]}" --precision fp32,int8 --compare pytorch,optimum,openvino \
    --peer-python "$PEER_PYTHON" --threads "$THREADS" --json "$OUT/$name.json" --plot "$OUT/$name.png"
  local rc=$?
  [ $rc -le 1 ] || return $rc  # 1: a peer is a failed row (Optimum and OpenVINO do not export Florence-2)
  python bench/report.py "$OUT/$name.json" >"$OUT/$name.md"
}

section_feed() {
  local long=60 short=20
  [ -n "$QUICK" ] && long=4 short=2
  {
    echo "| video | threads | model frames/s | feed frames/s | feed / model |"
    echo "|---|---|---|---|---|"
  } >"$OUT/feed-throughput.md"
  for spec in "$long 1" "$long 2" "$short $THREADS"; do
    set -- $spec
    run python bench/feed_throughput.py --bundle edgecap/data/demo-bundle --threads "$2" --seconds "$1" || return 1
    # its closing lines: "model (frames in memory): X frames/s", "feed  (decode + model): Y frames/s",
    # "ratio feed/model: Z" (bench/feed_throughput.py)
    tail -n 3 "$log" | awk -v secs="$1" -v threads="$2" '
      /^model \(frames/ {m=$(NF-1)} /^feed / {f=$(NF-1)} /^ratio/ {r=$3}
      END {printf "| %s s | %s | %s | %s | **%s** |\n", secs, threads, m, f, r}' >>"$OUT/feed-throughput.md"
  done
}

section_demo() {
  local count=500
  [ -n "$QUICK" ] && count=20
  run python models/demo/scenes.py --seed 777 --count 64 --out "$WORK/demo_eval" --size 96 || return 1
  run edgecap export models/demo/checkpoint "$WORK/demo_all" --precision fp32,int8,fp16,int4,int8-qdq \
    --min-agreement 0 --eval-images "$WORK/demo_eval" || return 1
  run python models/demo/evaluate.py --checkpoint models/demo/checkpoint --seed 1234 --count "$count" \
    --threads "$THREADS" --json "$OUT/demo-eval-checkpoint.json" || return 1
  for p in fp32 int8 fp16 int4 int8-qdq; do
    run python models/demo/evaluate.py --bundle "$WORK/demo_all" --precision "$p" --seed 1234 --count "$count" \
      --json "$OUT/demo-eval-$p.json" || return 1
  done
  # EVAL.md's table: exact match, BLEU-4 and the gap to fp32 per precision
  python - "$OUT" >"$OUT/demo-eval.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {p: json.loads((out / f"demo-eval-{p}.json").read_text()) for p in ("checkpoint", "fp32", "int8", "fp16", "int4", "int8-qdq")}
print("| captioner | exact match | BLEU-4 | vs fp32 | captions, s |")
print("|---|---|---|---|---|")
for name, r in rows.items():
    gap = (r["exact_match"] - rows["fp32"]["exact_match"]) * 100
    print(f"| {name} | **{r['exact_match']:.3f}** | {r['bleu4']:.4f} | {gap:+.1f} pt | {r['caption_seconds']:.1f} |")
EOF
}

machine
for s in "${sections[@]}"; do
  if ! declare -F "section_$s" >/dev/null; then
    echo "run_all: unknown section $s (main, feed, demo, florence)" >&2
    exit 2
  fi
  log="$OUT/$s.log"
  : >"$log"
  start=$SECONDS
  if "section_$s"; then
    note "$s: done in $((SECONDS - start)) s (log: $log)"
  else
    note "$s: FAILED after $((SECONDS - start)) s; see $log"
    status=1
  fi
done
exit $status
