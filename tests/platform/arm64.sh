#!/usr/bin/env bash
# ARM64 (the CPU of a Jetson or a Raspberry Pi) checked on an x86-64 Debian/Ubuntu machine, under
# qemu-user emulation: captions on the emulated CPU compared token for token with this host's.
#
#   sudo bash tests/platform/arm64.sh            # as root; ~15 min on 2 idle cores (docs/platforms.md)
#   sudo bash tests/platform/arm64.sh --rebuild  # make the arm64 root afresh
#
# What it does:
#  1. installs qemu-user-static, binfmt-support and debootstrap if missing, and registers qemu for
#     arm64 executables (binfmt_misc, with the F flag: the chroot needs no qemu binary of its own);
#  2. builds, once, a Debian arm64 root in $EDGECAP_ARM64_CACHE (default /var/cache/edgecap-arm64):
#     debootstrap's first stage, then the packages unpacked on the host (tests/platform/debextract.py)
#     instead of a second stage under emulation (~20 min); reused by later runs (--rebuild: anew);
#  3. on the host, meanwhile: exports bundles (tests/platform/bundles.py: a tiny model per family in
#     fp32 + int8, vit-gpt2 and the demo checkpoint in every precision, and the shipped demo bundle),
#     captions the 6 demo samples and 18 more scenes of the demo's world with them, and downloads
#     PyPI's aarch64 wheels of the runtime's dependencies (the host's versions);
#  4. inside the root: a venv, `pip install .` of this checkout (offline, from those wheels), the same
#     captions (greedy and beam 3) with QEMU_CPU=cortex-a76 (the Pi 5 core, closest to Orin's A78AE);
#     `edgecap caption models/demo/samples`; tests/test_invariance.py on the vit-gpt2 bundle; then per
#     emulated CPU (cortex-a72, cortex-a76, neoverse-n1, max) and precision the int8 and fp16
#     instructions (sdot/udot, smmla/ummla, fp16 fmla, ...) the captions execute, read from qemu's
#     translation log (`QEMU_LOG=in_asm`, tests/platform/armcpu.py), with their tokens;
#  5. compares with the host and writes $OUT/arm64-results.md and .json (default OUT: build/arm64).
#
# Exit status: 0 every fp32/int8/int8-qdq token equal to x86 (fp16 and int4 run other kernels on ARM:
# reported, not gated; docs/platforms.md) and the invariance test passed; 1 a difference or a failed step;
# 2 usage or environment. Captions under emulation run 35-70x slower than native: parity only, never
# timing. Safety: every mount (proc, sysfs read-only, a tmpfs /dev, the ARM cpuinfo) is made on a path
# checked to resolve inside the root (a symlink such as a debootstrap-made root/proc -> /proc is
# replaced by a directory first), nothing of the host is bind-mounted in, and everything mounted under
# the cache is unmounted on exit, on failure and on Ctrl-C (also what a killed earlier run left).
# Environment: EDGECAP_ARM64_CACHE, OUT, MIRROR (a Debian mirror; default: this host's, from apt),
# QEMU_CPU (default cortex-a76), KERNEL_CPUS (default "cortex-a72 cortex-a76 neoverse-n1 max"),
# PROBE_RUNS (default "fp32:fused int8:fused int8:plain fp16:plain int4:fused"),
# FAMILIES (tests/platform/bundles.py --families),
# EXTRA_SCENES (default 18), PYTHON (the host's, with torch and transformers: default python3).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
PLATFORM="$REPO/tests/platform"
SUITE=bookworm
ROOT_KEY="edgecap-arm64-root v1: $SUITE arm64 minbase python3-venv"
VENV=/opt/edgecap  # inside the root
PYTHON=${PYTHON:-python3}
MAIN_CPU=${QEMU_CPU:-cortex-a76}
KERNEL_CPUS=${KERNEL_CPUS:-cortex-a72 cortex-a76 neoverse-n1 max}
FAMILIES=${FAMILIES:-vit-gpt2,deit-trocr,deit-bert,vit-roberta,swin-bart,donut-mbart}
INVARIANCE_BUNDLE=vit-gpt2
EXTRA_SCENES=${EXTRA_SCENES:-18}  # captioned beside the 6 demo samples
# PRECISION:FORM captioned under qemu's translation log per emulated CPU (fused: ONNX Runtime's fused
# operators, the CPU default where a bundle has them; plain: the plain graphs)
PROBE_RUNS=${PROBE_RUNS:-fp32:fused int8:fused int8:plain fp16:plain int4:fused}
PROBE_BUNDLES="demo-export vit-gpt2"
CHROOT=$(command -v chroot || echo /usr/sbin/chroot)
ROOT_PY=3.11  # Debian bookworm's python3: the wheels are for it

say() { printf 'arm64 [%s]: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $1"; exit "${2:-1}"; }

STEP= REBUILD=
case "${1:-}" in
  __step) STEP=1 ;;  # internal: run one step function in a fresh shell (see step below)
  -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  --rebuild) REBUILD=1 ;;
  "") ;;
  *) die "unknown argument $1 (--rebuild, --help)" 2 ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root (it mounts filesystems and chroots)" 2
[ "$(uname -m)" = x86_64 ] || die "this host is $(uname -m); the script emulates arm64 on x86_64" 2
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get)" 2

mkdir -p "${EDGECAP_ARM64_CACHE:=/var/cache/edgecap-arm64}"
CACHE=$(realpath -e "$EDGECAP_ARM64_CACHE")
case "$CACHE" in /|*[[:space:]]*) die "EDGECAP_ARM64_CACHE must be a directory without spaces, not /" 2 ;; esac
ROOT="$CACHE/root"
NEW_ROOT="$CACHE/root.new"
RUN="$CACHE/run"  # this run's host-side files
OUT=${OUT:-$REPO/build/arm64}
HOST_PID=

# ---------------------------------------------------------------- mounts and cleanup
mounts_under() {  # mount points at or under $1, deepest first (mountinfo's 5th field)
  awk -v p="$1" '$5 == p || index($5, p "/") == 1 {print length($5) "\t" $5}' /proc/self/mountinfo | sort -rn | cut -f2-
}

kill_root_processes() {  # processes chrooted into $1: only this script starts any there
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$1" ] && kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
}

unmount_all() {
  local base=$1 m
  kill_root_processes "$base"
  while read -r m; do
    [ -n "$m" ] || continue
    umount "$m" 2>/dev/null || umount -l "$m" || say "warning: could not unmount $m"
  done < <(mounts_under "$base")
  [ -z "$(mounts_under "$base")" ] || say "warning: still mounted under $base: $(mounts_under "$base" | tr '\n' ' ')"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$HOST_PID" ]; then kill -- "-$HOST_PID" 2>/dev/null || true; fi
  unmount_all "$ROOT"
  unmount_all "$NEW_ROOT"
  exit "$rc"
}

inside() {  # inside ROOT REL: absolute path of REL in ROOT, refusing any path that resolves elsewhere
  local root=$1 rel=$2 real
  real=$(realpath -e -- "$root/$rel") || die "$root/$rel does not exist"
  [ "$real" = "$root/$rel" ] || die "refusing to use $root/$rel: it resolves to $real, outside the root or through a symlink"
  printf '%s\n' "$real"
}

ensure_dir() {  # a real directory at ROOT/REL (a symlink there, e.g. proc -> /proc, is replaced)
  local root=$1 rel=$2
  if [ -L "$root/$rel" ]; then rm -f -- "$root/$rel"; fi
  mkdir -p -- "$root/$rel"
  inside "$root" "$rel" >/dev/null
}

mount_root() {  # mount_root ROOT: proc, read-only sysfs, a tmpfs /dev with the usual nodes
  local root=$1 dev
  for d in proc sys dev; do ensure_dir "$root" "$d"; done
  mount -t proc -o nosuid,nodev,noexec proc "$(inside "$root" proc)"
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$(inside "$root" sys)"
  dev=$(inside "$root" dev)
  mount -t tmpfs -o nosuid,noexec,mode=0755,size=1m tmpfs "$dev"
  mknod -m 666 "$dev/null" c 1 3; mknod -m 666 "$dev/zero" c 1 5; mknod -m 666 "$dev/full" c 1 7
  mknod -m 666 "$dev/random" c 1 8; mknod -m 666 "$dev/urandom" c 1 9; mknod -m 666 "$dev/tty" c 5 0
  ln -s /proc/self/fd "$dev/fd"; ln -s /proc/self/fd/0 "$dev/stdin"
  ln -s /proc/self/fd/1 "$dev/stdout"; ln -s /proc/self/fd/2 "$dev/stderr"; mkdir "$dev/shm"
}

in_root() {  # in_root ROOT [VAR=VALUE...] COMMAND...: run under emulation with a clean environment
  local root=$1; shift
  local vars=(HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 "QEMU_CPU=${CPU:-$MAIN_CPU}"
              PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin)
  while [[ "${1:-}" == *=* ]]; do vars+=("$1"); shift; done
  env -i "${vars[@]}" "$CHROOT" "$root" "$@"
}

use_cpu() {  # use_cpu CPU: QEMU_CPU for the next commands, with an ARM /proc/cpuinfo describing it
  CPU=$1
  local target
  target=$(inside "$ROOT" proc/cpuinfo)
  if mounts_under "$target" | grep -q .; then umount "$target"; fi
  # qemu 7.2 shows the guest the host's x86 cpuinfo, on which onnxruntime's CPU detection crashes
  in_root "$ROOT" python3 /src/tests/platform/armcpu.py cpuinfo >"$ROOT/work/cpuinfo-$CPU"
  grep -q '^CPU part' "$ROOT/work/cpuinfo-$CPU" || die "could not describe $CPU (see $ROOT/work/cpuinfo-$CPU)"
  mount --bind "$ROOT/work/cpuinfo-$CPU" "$target"
  mount -o remount,bind,ro "$target"
}

timed() {  # timed NAME COMMAND...: run, and record its wall time
  local name=$1 start=$SECONDS rc=0; shift
  "$@" || rc=$?
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >>"$RUN/timings.tsv"
  return "$rc"
}

# A function run as `f || ...` or `if f` runs with errexit off (bash's rule, subshells included),
# so every multi-command step runs in a fresh shell of this script, where a failing command stops it.
step() { "$BASH" "${BASH_SOURCE[0]}" __step "$@"; }

# ---------------------------------------------------------------- host tools and emulation
host_tools() {
  local missing=()
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed" 2
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc" 2
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
  grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)" 2
  # F: the kernel opens qemu at registration, so it need not exist inside the root
  grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "qemu-aarch64's binfmt entry lacks the F flag; use Debian's qemu-user-static registration" 2
}

host_mirror() {  # the Debian mirror this host's apt uses (never a hard-coded host)
  [ -n "${MIRROR:-}" ] && { echo "$MIRROR"; return; }
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
      /^URIs:/ {u=$2} /^Suites:/ && u != "" && u !~ /security/ && $0 !~ /security/ {print u; exit}')
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -n1)
  case "$uri" in
    */debian|*/debian/) echo "$uri" ;;
    *) die "cannot tell this host's Debian mirror (found '${uri:-nothing}'); set MIRROR to one" 2 ;;
  esac
}

# ---------------------------------------------------------------- the arm64 root (cached)
build_root() {
  local mirror debs
  mirror=$(host_mirror)
  unmount_all "$NEW_ROOT"
  rm -rf --one-file-system -- "$NEW_ROOT"
  say "debootstrap (first stage) of Debian $SUITE arm64 from $mirror"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3-venv \
    "$SUITE" "$NEW_ROOT" "$mirror" >"$RUN/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $RUN/debootstrap.log (tail: $(tail -n 2 "$RUN/debootstrap.log" | tr '\n' ' '))"
  # debootstrap may leave proc as a symlink to the host's /proc: a mount through it lands on the host
  for d in proc sys dev; do ensure_dir "$NEW_ROOT" "$d"; done
  say "unpacking $(ls "$NEW_ROOT"/var/cache/apt/archives/*.deb | wc -l) packages on the host (no second stage)"
  debs=("$NEW_ROOT"/var/cache/apt/archives/*.deb)
  "$PYTHON" "$PLATFORM/debextract.py" "$NEW_ROOT" "${debs[@]}"
  # what the skipped maintainer scripts would have done, as far as Python and pip need it
  cp "$NEW_ROOT/usr/share/base-passwd/passwd.master" "$NEW_ROOT/etc/passwd"
  cp "$NEW_ROOT/usr/share/base-passwd/group.master" "$NEW_ROOT/etc/group"
  mkdir -p "$NEW_ROOT/etc/ssl/certs" "$NEW_ROOT/root" "$NEW_ROOT/tmp" "$NEW_ROOT/work" "$NEW_ROOT/src"
  chmod 1777 "$NEW_ROOT/tmp"
  # the host's CA bundle: whatever this host needs to reach the package index, pip in the root needs too
  cp /etc/ssl/certs/ca-certificates.crt "$NEW_ROOT/etc/ssl/certs/ca-certificates.crt"
  rm -rf -- "$NEW_ROOT/var/cache/apt/archives/"*.deb "$NEW_ROOT/debootstrap"
  in_root "$NEW_ROOT" /sbin/ldconfig
  in_root "$NEW_ROOT" python3 -c 'import platform; assert platform.machine() == "aarch64", platform.machine()' \
    || die "python3 does not run in the new root"
  echo "$ROOT_KEY" >"$NEW_ROOT/.edgecap-root"
  unmount_all "$ROOT"
  rm -rf --one-file-system -- "$ROOT"
  mv "$NEW_ROOT" "$ROOT"
}

root_ready() { [ -d "$ROOT" ] && [ "$(cat "$ROOT/.edgecap-root" 2>/dev/null)" = "$ROOT_KEY" ]; }

# ---------------------------------------------------------------- host side (runs in the background)
host_side() {
  local pkgs="$RUN/pkgs"
  mkdir -p "$pkgs"
  # this checkout's code, whatever else this Python has installed (an editable install elsewhere)
  ln -sfn "$REPO/edgecap" "$pkgs/edgecap"
  ln -sfn "$REPO/export" "$pkgs/edgecap_export"
  export PYTHONPATH="$pkgs"
  timed "host: download aarch64 wheels" wheels
  timed "host: export bundles" "$PYTHON" "$PLATFORM/bundles.py" "$RUN/bundles" --families "$FAMILIES"
  # the demo's 6 samples and more scenes of the demo's world (models/demo/scenes.py, a fixed seed)
  mkdir -p "$RUN/images" "$RUN/scenes"
  cp "$REPO"/models/demo/samples/*.png "$RUN/images/"
  "$PYTHON" "$REPO/models/demo/scenes.py" --seed 2026 --count "$EXTRA_SCENES" --size 96 --out "$RUN/scenes" >/dev/null
  local f
  for f in "$RUN"/scenes/*.png; do cp "$f" "$RUN/images/extra_$(basename "$f")"; done
  timed "host: captions (x86)" "$PYTHON" "$PLATFORM/captions.py" dump --out "$RUN/host.json" \
    --images "$RUN/images" "$RUN"/bundles/*
}

wheels() {  # PyPI's aarch64 wheels of the runtime's dependencies, at the host's versions when PyPI has them
  local pins
  pins=$("$PYTHON" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("numpy", "onnxruntime", "pillow", "tokenizers")))
EOF
)
  local dir="$CACHE/wheels/py$ROOT_PY"
  mkdir -p "$dir"
  local args=(--only-binary=:all: --python-version "$ROOT_PY" --implementation cp --platform manylinux_2_36_aarch64
              --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
              --platform manylinux2014_aarch64 -d "$dir")
  # pytest for the invariance test; setuptools and wheel build this checkout offline in the root
  if ! "$PYTHON" -m pip download -q "${args[@]}" $pins pytest setuptools wheel >"$RUN/pip-download.log" 2>&1; then
    say "the host's versions ($pins) are not all on the index for aarch64; taking the newest"
    "$PYTHON" -m pip download -q "${args[@]}" numpy onnxruntime pillow tokenizers pytest setuptools wheel \
      >>"$RUN/pip-download.log" 2>&1 || { say "pip download failed: see $RUN/pip-download.log"; return 1; }
    pins="numpy onnxruntime pillow tokenizers"
  fi
  echo "$pins" >"$RUN/pins.txt"
}

# ---------------------------------------------------------------- inside the root
install_runtime() {
  local wheels="$CACHE/wheels/py$ROOT_PY"
  rm -rf --one-file-system -- "$ROOT/wheels"
  mkdir -p "$ROOT/wheels"
  cp "$wheels"/*.whl "$ROOT/wheels/"
  if [ ! -x "$ROOT$VENV/bin/python" ]; then
    in_root "$ROOT" python3 -m venv "$VENV"
  fi
  # the runtime's dependencies from the wheels (a no-op once they are in), then this checkout: pip install .
  # shellcheck disable=SC2046
  in_root "$ROOT" pip install -q --no-index --find-links /wheels $(cat "$RUN/pins.txt") pytest
  in_root "$ROOT" sh -c "cd /src && pip install -q --no-index --find-links /wheels --force-reinstall --no-deps ."
  in_root "$ROOT" python -P -c 'import edgecap, onnxruntime; print("edgecap", edgecap.__file__, "onnxruntime", onnxruntime.__version__)'
}

copy_checkout() {  # the files git knows (tracked, and untracked but not ignored) into ROOT/src
  rm -rf --one-file-system -- "$ROOT/src"
  mkdir -p "$ROOT/src"
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
      | (cd "$REPO" && tar --null --files-from=- -cf - 2>/dev/null) | tar -xf - -C "$ROOT/src"
  else
    (cd "$REPO" && tar --exclude=./build --exclude=./.git -cf - .) | tar -xf - -C "$ROOT/src"
  fi
}

kernel_probe() {  # kernel_probe CPU: its features, and per precision the instructions the captions translate
  local cpu=$1 run prec form runs=$PROBE_RUNS b bundles=() tags=()
  # qemu emulates max's SVE/SME slowly (minutes per run); what it adds is the i8mm int8 kernel
  [ "$cpu" = max ] && runs="int8:fused int8:plain"
  for b in $PROBE_BUNDLES; do bundles+=("/work/bundles/$b"); done
  use_cpu "$cpu"
  in_root "$ROOT" python3 /src/tests/platform/armcpu.py features >"$ROOT/work/features-$cpu.json"
  for run in $runs; do
    prec=${run%%:*} form=${run#*:}
    tags+=("$prec-$form")
    rm -f "$ROOT/work/qemu-$cpu-$prec-$form.log"
    in_root "$ROOT" QEMU_LOG=in_asm "QEMU_LOG_FILENAME=/work/qemu-$cpu-$prec-$form.log" \
      python -P /src/tests/platform/captions.py dump --out "/work/probe-$cpu-$prec-$form.json" \
      --images /src/models/demo/samples --precisions "$prec" --forms "$form" "${bundles[@]}" >/dev/null
    python3 "$PLATFORM/armcpu.py" count "$ROOT/work/qemu-$cpu-$prec-$form.log" >"$ROOT/work/count-$cpu-$prec-$form.json"
    rm -f "$ROOT/work/qemu-$cpu-$prec-$form.log"
  done
  python3 - "$ROOT/work" "$cpu" "$RUN/kernels-$cpu.json" "${tags[@]}" <<'EOF'
import json, sys
from pathlib import Path
work, cpu, out, tags = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
k = json.loads((work / f"features-{cpu}.json").read_text())
k["runs"] = {}
for tag in tags:
    prec, form = tag.rsplit("-", 1)
    k["runs"][f"{prec} ({form})"] = {"instructions": json.loads((work / f"count-{cpu}-{tag}.json").read_text()),
                                     "captions": json.loads((work / f"probe-{cpu}-{tag}.json").read_text())}
out.write_text(json.dumps(k, indent=1))
EOF
}

main_captions() {
  local bundles=() d
  for d in "$ROOT"/work/bundles/*/; do bundles+=("/work/bundles/$(basename "$d")"); done
  in_root "$ROOT" python -P /src/tests/platform/captions.py dump --out /work/arm-main.json \
    --images /work/images "${bundles[@]}"
  cp "$ROOT/work/arm-main.json" "$RUN/arm-main.json"
}

write_meta() {
  "$PYTHON" - "$RUN/meta.json" "$SUITE" "$INVARIANCE_BUNDLE" "$MAIN_CPU" "$RUN/bundles" "$EXTRA_SCENES" <<'EOF'
import datetime, json, platform, subprocess, sys
from pathlib import Path
out, suite, inv, cpu, bundles, extra = sys.argv[1:]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.split()[2]
json.dump({"date": datetime.date.today().isoformat(), "host_cpu": model, "qemu": qemu, "suite": suite,
           "images": f"the 6 demo samples and {extra} more scenes of the demo's world (seed 2026)",
           "bundles": sorted(p.name for p in Path(bundles).iterdir()),
           "invariance_bundle": inv, "main_cpu": cpu}, open(out, "w"), indent=1)
EOF
}

# ---------------------------------------------------------------- main
if [ -n "$STEP" ]; then
  shift
  "$@"
  exit
fi

# the whole run is one function, parsed before it starts: editing this file during a run cannot
# change what the run does next (bash reads a script as it goes)
main() {
  trap cleanup EXIT
  trap 'say "interrupted"; exit 130' INT TERM HUP
  START=$SECONDS
  host_tools
  exec 9>"$CACHE/lock"
  flock -n 9 || die "another run holds $CACHE/lock" 2
  unmount_all "$ROOT"      # what a killed earlier run may have left
  unmount_all "$NEW_ROOT"
  rm -rf --one-file-system -- "$RUN"
  mkdir -p "$RUN" "$OUT"
  rm -f "$OUT"/{host.json,arm-main.json,meta.json,timings.tsv,cli.txt,invariance.txt,arm64-results.md,arm64-results.json} \
    "$OUT"/kernels-*.json
  : >"$RUN/timings.tsv"

  # the host side needs nothing from the root: it runs while the root is built
  setsid "$BASH" "${BASH_SOURCE[0]}" __step host_side >"$RUN/host.log" 2>&1 &
  HOST_PID=$!
  if [ -n "$REBUILD" ] || ! root_ready; then
    timed "root: debootstrap + unpack" step build_root || die "building the root failed (see above)"
  else
    say "reusing the arm64 root in $ROOT"
  fi

  step copy_checkout || die "copying the checkout into the root failed"
  rm -rf --one-file-system -- "$ROOT/work"
  mkdir -p "$ROOT/work"
  mount_root "$ROOT"
  use_cpu "$MAIN_CPU"

  say "waiting for the host side (bundles, x86 captions, wheels): log $RUN/host.log"
  wait "$HOST_PID" || die "the host side failed; see $RUN/host.log (tail: $(tail -n 3 "$RUN/host.log" | tr '\n' ' '))"
  HOST_PID=
  cp -r "$RUN/bundles" "$ROOT/work/bundles"
  cp -r "$RUN/images" "$ROOT/work/images"

  say "installing the runtime in the root (pip install . from the checkout)"
  timed "root: venv + pip install ." step install_runtime >"$RUN/install.log" 2>&1 \
    || die "installing in the root failed; see $RUN/install.log"
  tail -n 1 "$RUN/install.log" >&2

  say "captions under QEMU_CPU=$MAIN_CPU"
  timed "root: captions ($MAIN_CPU)" step main_captions 2>"$RUN/arm-captions.log" \
    || die "captioning in the root failed; see $RUN/arm-captions.log"

  say "edgecap caption models/demo/samples (the installed demo bundle)"
  timed "root: edgecap caption (CLI)" in_root "$ROOT" sh -c 'cd /src && edgecap caption models/demo/samples' \
    >"$RUN/cli.txt" 2>&1 || say "the CLI failed; see $RUN/cli.txt"

  say "tests/test_invariance.py on the $INVARIANCE_BUNDLE bundle under QEMU_CPU=$MAIN_CPU"
  timed "root: test_invariance.py ($MAIN_CPU)" in_root "$ROOT" \
    "EDGECAP_INVARIANCE_BUNDLES=/work/bundles/$INVARIANCE_BUNDLE" sh -c \
    'cd /src && python -P -m pytest -q -p no:cacheprovider tests/test_invariance.py' >"$RUN/invariance.txt" 2>&1 \
    || say "the invariance test failed; see $RUN/invariance.txt"

  for cpu in $KERNEL_CPUS; do
    say "kernels under QEMU_CPU=$cpu"
    timed "root: kernel probe ($cpu)" step kernel_probe "$cpu" 2>>"$RUN/kernels.log" \
      || say "the kernel probe under $cpu failed; see $RUN/kernels.log"
  done

  unmount_all "$ROOT"
  step write_meta
  printf 'total\t%s\n' "$((SECONDS - START))" >>"$RUN/timings.tsv"
  cp "$RUN"/{host.json,arm-main.json,meta.json,timings.tsv,cli.txt,invariance.txt} "$OUT"/ 2>/dev/null || true
  cp "$RUN"/kernels-*.json "$OUT"/ 2>/dev/null || true
  rc=0
  # each difference judged on the host's graphs: this checkout's runtime
  PYTHONPATH="$RUN/pkgs" "$PYTHON" "$PLATFORM/captions.py" report "$OUT" --bundles "$RUN/bundles" --images "$RUN/images" \
    || rc=1
  say "results: $OUT/arm64-results.md ($([ $rc -eq 0 ] && echo 'the gate passed' || echo 'SOME CHECK FAILED'))"
  exit $rc
}

main "$@"; exit
