"""The GPU check's body: what bench/gpu_check.sh runs once a GPU and onnxruntime-gpu are there.

Phases, most important first, each bounded by what is left of --budget (a phase that cannot start in
time is recorded as not run, and the check then does not pass):

1. environment: GPU, driver, CUDA, onnxruntime(-gpu) and its providers, torch, TensorRT;
2. parity: the demo model and one tiny model per family (tests/tiny.py) exported here in fp32 and
   fp16, captioned (greedy, beam 4) by the CPU fp32 graphs (the plain ones, which the GPU backends
   run too) and by the `cuda` backend; then
   `ort-tensorrt` and `tensorrt` on fp32 (a few bundles: engines take a while to build), or one
   "skipped: ..." row each where TensorRT is absent.
   Gated: fp32 on a GPU backend must give the CPU fp32 tokens. fp16 is reported against CPU fp32 and
   against the same fp16 graphs on the CPU;
3. bench: `edgecap-bench` on the `cuda` backend for the demo model and the ViT-GPT-2-base geometry
   (random weights), batch 1 and 8, greedy and beam 4, fp32 and fp16, beside PyTorch on the GPU
   (`--compare pytorch-cuda`) where torch sees CUDA;
4. the GPU tests (`pytest -m gpu tests/test_gpu.py`), if time is left.

Writes OUT/gpu-check.json (everything) and OUT/gpu-check.md (the tables). Exit status: 0 every phase
ran and every gated row passed; 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "platform"))

GPU_PRECISIONS = ("fp32", "fp16")
BEAMS = (1, 4)
# every encoder x decoder family tests/tiny.py builds, one tiny model each (see bundles.py)
FAMILIES = ("vit-gpt2", "deit-gpt2", "vit-trocr", "deit-trocr", "deit-bert", "vit-roberta", "vit-electra",
            "swin-bart", "swin-gpt2", "donut-mbart")
# the TensorRT backends build engines per bundle (tens of seconds each): a few bundles only
TENSORRT_BUNDLES = ("demo-export", "vit-gpt2", "deit-trocr")
log = logging.getLogger("gpu_check")


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), cwd=REPO)
        return res.returncode, (res.stdout + res.stderr)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f} s)"
    except OSError as exc:
        return 127, str(exc)


# ---------------------------------------------------------------- 1. environment
def environment() -> dict:
    import onnxruntime as ort

    env: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "host": platform.node(), "python": platform.python_version(),
                 "onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
                 "providers": ort.get_available_providers()}
    rc, out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"], 30)
    env["gpus"] = [line.strip() for line in out.splitlines() if line.strip()] if rc == 0 else []
    rc, out = _run(["nvidia-smi"], 30)
    env["cuda_driver"] = next((line.split("CUDA Version:")[1].strip(" |") for line in out.splitlines()
                               if "CUDA Version:" in line), None) if rc == 0 else None
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["torch_sees_gpu"] = bool(torch.cuda.is_available())
    except ImportError:
        env["torch"], env["torch_sees_gpu"] = None, False
    try:
        from edgecap.gpu.cudart import load_cuda

        cuda = load_cuda()
        env["cudart"] = {"via": cuda.name, "devices": cuda.device_count(), "compute_capability": cuda.device_info()[1]}
    except Exception as exc:
        env["cudart"] = {"error": first_line(exc)}
    env["tensorrt"] = tensorrt_status(env["providers"])
    return env


def tensorrt_status(providers: list[str]) -> dict:
    """What each TensorRT-based backend lacks here (None where it can run)."""
    status: dict = {}
    try:
        import tensorrt

        status["tensorrt_module"] = tensorrt.__version__
    except Exception as exc:
        status["tensorrt_module"] = None
        status["tensorrt_missing"] = f"the tensorrt Python package is not installed ({first_line(exc)})"
    if "TensorrtExecutionProvider" not in providers:
        status["ort_tensorrt_missing"] = "this onnxruntime has no TensorrtExecutionProvider"
    else:
        import ctypes

        for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
            try:
                ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            status["ort_tensorrt_missing"] = "TensorrtExecutionProvider is listed but the TensorRT libraries (libnvinfer) are not found"
    return status


# ---------------------------------------------------------------- 2. parity
def build_bundles(work: Path, prebuilt: Path | None) -> tuple[list[Path], list[str]]:
    """(bundles to check, notes). Exported here when the exporter imports, else prebuilt or the demo."""
    if prebuilt is not None:
        return sorted(p for p in prebuilt.iterdir() if (p / "manifest.json").is_file()), [f"bundles from {prebuilt}"]
    try:
        import bundles  # tests/platform/bundles.py: needs torch and transformers

        made = bundles.build(work / "bundles", list(FAMILIES), set(), demo_export=GPU_PRECISIONS, base=GPU_PRECISIONS)
        return [p for p in made if p.name != "demo"], []
    except ImportError as exc:
        from edgecap import default_bundle_dir

        note = (f"the exporter cannot run here ({exc.name} missing): only the shipped demo bundle (fp32) is checked; "
                "export bundles elsewhere (python tests/platform/bundles.py OUT) and pass --bundles OUT")
        return [default_bundle_dir()], [note]


def parity(bundles: list[Path], images: list[str], backends: list[str], budget: Budget) -> list[dict]:
    from edgecap import Captioner
    from edgecap.bundle import load_bundle

    rows: list[dict] = []
    for bundle in bundles:
        if budget.left() < 20:
            rows.append({"bundle": bundle.name, "error": "not run: out of time budget"})
            continue
        have = load_bundle(bundle, verify_checksums=False).precisions
        try:
            # the plain graphs, which the GPU backends run too (fused ones are a CPU form)
            cpu = Captioner(bundle, precision="fp32", backend="cpu", fused=False)
            ref = {b: cpu.caption(images, num_beams=b) for b in BEAMS}
        except Exception as exc:
            rows.append({"bundle": bundle.name, "error": f"CPU reference failed: {first_line(exc)}"})
            continue
        for backend in backends:
            if backend in ("ort-tensorrt", "tensorrt") and bundle.name not in TENSORRT_BUNDLES:
                continue
            for precision in [p for p in GPU_PRECISIONS if p in have and (backend in ("cuda", "cpu") or p == "fp32")]:
                rows.append(_parity_row(bundle, precision, backend, images, ref))
    return rows


def _parity_row(bundle: Path, precision: str, backend: str, images: list[str], ref: dict) -> dict:
    from edgecap import Captioner

    row: dict = {"bundle": bundle.name, "precision": precision, "backend": backend, "images": len(images)}
    t0 = time.perf_counter()
    try:
        if backend == "tensorrt":
            ensure_engines(bundle, precision)
        cap = Captioner(bundle, precision=precision, backend=backend)
        same = Captioner(bundle, precision=precision, backend="cpu", fused=False) if precision != "fp32" else None
        for b in BEAMS:
            got = cap.caption(images, num_beams=b)
            row[f"beams{b}_equal_cpu_fp32"] = sum(g.token_ids == r.token_ids for g, r in zip(got, ref[b]))
            row[f"beams{b}_max_score_diff"] = max(abs(g.score - r.score) for g, r in zip(got, ref[b]))
            if same is not None:
                want = same.caption(images, num_beams=b)
                row[f"beams{b}_equal_cpu_same"] = sum(g.token_ids == w.token_ids for g, w in zip(got, want))
    except Exception as exc:
        row["error"] = first_line(exc)
        log.debug("%s", traceback.format_exc())
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def ensure_engines(bundle: Path, precision: str) -> None:
    from edgecap.bundle import load_bundle
    from edgecap.gpu import select
    from edgecap.gpu.profiles import default_limits
    from edgecap.gpu.trt_build import BuildOptions, build_engines

    b = load_bundle(bundle)
    if precision not in select.usable_engine_precisions(b, select.probe_tensorrt_env(), precision):
        build_engines(b, BuildOptions(precision, default_limits(b.manifest)))


def gated_failures(rows: list[dict]) -> list[str]:
    """Why the parity phase does not pass: an error, or a GPU fp32 caption unlike the CPU's."""
    out = []
    for r in rows:
        if r.get("skipped"):
            continue
        name = f"{r['bundle']} {r.get('precision', '')} {r.get('backend', '')}".strip()
        if r.get("error"):
            out.append(f"{name}: {r['error']}")
        elif r["precision"] == "fp32":
            for b in BEAMS:
                if r[f"beams{b}_equal_cpu_fp32"] != r["images"]:
                    out.append(f"{name}: beam {b}: {r[f'beams{b}_equal_cpu_fp32']}/{r['images']} captions equal to CPU fp32")
    return out


# ---------------------------------------------------------------- 3. bench
def synthetic_bundle(work: Path, images: list[str]) -> tuple[Path, Path]:
    """The ViT-GPT-2-base geometry (random weights), exported in fp32 and fp16. Cheaper than the
    bench's own export: 2 verification images and a precision judge over 4 images (the bench
    measures speed; random weights have no quality to judge)."""
    from edgecap_export.exporter import ExportOptions, export
    from edgecap_export.peers import build_synthetic

    ckpt = work / "vit-gpt2-base" / "checkpoint"
    if not (ckpt / "config.json").is_file():
        build_synthetic("vit-gpt2-base", ckpt)
    bundle = work / "vit-gpt2-base" / "bundle"
    if not (bundle / "manifest.json").is_file():
        export(str(ckpt), bundle, ExportOptions(precisions=GPU_PRECISIONS, min_agreement=0.0, verify_images=2,
                                                eval_images=tuple(images[:4])))
    return bundle, ckpt


def bench(name: str, bundle: Path, ckpt: Path | None, out: Path, with_torch: bool, timeout: float,
          backend: str = "cuda") -> dict:
    cmd = [sys.executable, "-m", "edgecap.bench", "--bundle", str(bundle), "--backend", backend,
           "--precision", ",".join(GPU_PRECISIONS), "--batch-sizes", "1,8", "--beams", "1,4", "--new-tokens", "16",
           "--warmup", "1", "--repeat", "3", "--json", str(out / f"bench-{name}.json")]
    if ckpt is not None:
        cmd += ["--model", str(ckpt)]
        if with_torch:
            cmd += ["--compare", "pytorch-cuda"]
    t0 = time.perf_counter()
    rc, text = _run(cmd, timeout)
    (out / f"bench-{name}.log").write_text(text)
    result: dict = {"name": name, "command": " ".join(cmd[1:]), "exit": rc, "seconds": round(time.perf_counter() - t0, 1)}
    path = out / f"bench-{name}.json"
    if path.is_file():
        result["rows"] = json.loads(path.read_text())["rows"]
    if rc != 0:
        result["error"] = f"edgecap-bench exited {rc}: " + (text.strip().splitlines() or [""])[-1][:300]
    return result


# ---------------------------------------------------------------- report
def markdown(result: dict) -> str:
    env = result["environment"]
    out = [f"## GPU check: {env['date']}", "",
           f"- GPU: {'; '.join(env['gpus']) or '?'}; CUDA (driver) {env.get('cuda_driver')}; "
           f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, sees a GPU: {env.get('torch_sees_gpu')})",
           f"- onnxruntime {env['onnxruntime']}: {', '.join(env['providers'])}",
           f"- TensorRT: {env['tensorrt'].get('tensorrt_module') or 'absent'}"
           + "".join(f"; {v}" for k, v in env["tensorrt"].items() if k.endswith("_missing")), ""]
    out += [*(f"- note: {n}" for n in result.get("notes", [])), ""] if result.get("notes") else []
    out += ["### Token parity with CPU fp32 (demo samples; greedy, beam 4)", "",
            "| bundle | backend | precision | greedy = CPU fp32 | beam 4 = CPU fp32 | max \\|Δ score\\| | = CPU same precision | s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in result["parity"]:
        if r.get("error") or r.get("skipped"):
            out.append(f"| {r['bundle']} | {r.get('backend', '-')} | {r.get('precision', '-')} | "
                       f"{r.get('skipped') or 'failed: ' + r['error'].replace('|', '/')} | | | | |")
            continue
        n = r["images"]
        same = " / ".join(f"{r[f'beams{b}_equal_cpu_same']}/{n}" for b in BEAMS) if "beams1_equal_cpu_same" in r else "-"
        diff = max(r[f"beams{b}_max_score_diff"] for b in BEAMS)
        out.append(f"| {r['bundle']} | {r['backend']} | {r['precision']} | {r['beams1_equal_cpu_fp32']}/{n} | "
                   f"{r['beams4_equal_cpu_fp32']}/{n} | {diff:.1e} | {same} | {r['seconds']} |")
    out += ["", f"### edgecap-bench on the {'CPU (rehearsal)' if result.get('rehearsal') else 'CUDA'} backend (16 new tokens)", "",
            "| model | engine | backend | prec | batch | beams | p50 ms | img/s | step ms | step / floor | vs PyTorch CUDA |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in result["bench"]:
        if b.get("error") and not b.get("rows"):
            out.append(f"| {b['name']} | failed: {b['error'].replace('|', '/')} | | | | | | | | | |")
            continue
        torch_rows = {(r["precision"], r["batch_size"], r["num_beams"]): r for r in b.get("rows", [])
                      if r["engine"] == "pytorch-cuda" and not r["error"]}
        for r in b.get("rows", []):
            lead = f"| {b['name']} | {r['engine']} | {r['backend']} | {r['precision']} | {r['batch_size']} | {r['num_beams']} |"
            if r["error"]:
                out.append(f"{lead} failed: {r['error'].replace('|', '/')} | | | | |")
                continue
            base = torch_rows.get((r["precision"], r["batch_size"], r["num_beams"]))
            step = f"{r['decoder_step_ms']:.3f}" if r.get("decoder_step_ms") else "-"
            floor = f"{r['decoder_step_ms'] / r['floor_decoder_step_ms']:.1f}×" if r.get("decoder_step_ms") and r.get("floor_decoder_step_ms") else "-"
            vs = f"{r['latency_ms_p50'] / base['latency_ms_p50']:.2f}×" if base and r["engine"] == "edgecap" else "-"
            out.append(f"{lead} {r['latency_ms_p50']:.1f} | {r['images_per_s']:.1f} | {step} | {floor} | {vs} |")
    if result.get("gpu_tests"):
        t = result["gpu_tests"]
        out += ["", f"### `pytest -m gpu tests/test_gpu.py`: exit {t['exit']}", "", "```", t["summary"], "```"]
    verdict = "PASSED" if result["passed"] else "NOT PASSED"
    if result.get("rehearsal"):
        verdict = f"CPU REHEARSAL, NO GPU CHECKED (the flow {'ran' if result['passed'] else 'failed'})"
    out += ["", f"### Verdict: {verdict}", ""]
    out += [f"- {p}" for p in result["problems"]] or ["- every phase ran; every fp32 GPU caption equals CPU fp32"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "edgecap-gpu-check")
    p.add_argument("--budget", type=float, default=420, help="seconds for everything (default 420)")
    p.add_argument("--bundles", type=Path, help="prebuilt bundles to check instead of exporting tiny ones here")
    # the whole flow on the CPU provider, to try this script where there is no GPU; its result
    # says so and is never a GPU result (gpu_check.sh does not use it)
    p.add_argument("--rehearse-on-cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-synthetic", action="store_true", help="no ViT-GPT-2-base bench (its export takes minutes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="gpu_check: %(message)s", stream=sys.stderr)
    budget = Budget(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    images = [str(p) for p in sorted((REPO / "models" / "demo" / "samples").glob("*.png"))]
    problems: list[str] = []

    env = environment()
    log.info("GPU %s; onnxruntime %s with %s", env["gpus"], env["onnxruntime"], env["providers"])
    result: dict = {"environment": env, "parity": [], "bench": [], "notes": [], "rehearsal": args.rehearse_on_cpu}
    gpu = "cpu" if args.rehearse_on_cpu else "cuda"
    if "CUDAExecutionProvider" not in env["providers"] and not args.rehearse_on_cpu:
        problems.append("onnxruntime has no CUDAExecutionProvider: nothing on the GPU could run")

    backends = [gpu]
    trt = env["tensorrt"]
    skipped = []
    for backend, key in (("ort-tensorrt", "ort_tensorrt_missing"), ("tensorrt", "tensorrt_missing")):
        if args.rehearse_on_cpu:
            continue
        if trt.get(key):
            skipped.append({"bundle": "(all)", "backend": backend, "skipped": f"skipped: {trt[key]}"})
        else:
            backends.append(backend)

    log.info("parity: exporting bundles (%.0f s left)", budget.left())
    t0 = time.perf_counter()
    try:
        bundles, notes = build_bundles(args.work, args.bundles)
        result["notes"] += notes
    except Exception as exc:
        bundles = []
        problems.append(f"exporting the bundles failed: {first_line(exc)}")
    result["export_seconds"] = round(time.perf_counter() - t0, 1)
    if not problems:
        log.info("parity: %d bundles x %s (%.0f s left)", len(bundles), backends, budget.left())
        result["parity"] = parity(bundles, images, backends, budget) + skipped
        problems += gated_failures(result["parity"])

    with_torch = bool(env.get("torch_sees_gpu"))
    if not with_torch:
        result["notes"].append("torch sees no CUDA device: no PyTorch CUDA rows")
    demo = next((b for b in bundles if b.name == "demo-export"), None)
    for name in ("demo",) if args.skip_synthetic else ("demo", "vit-gpt2-base"):
        left = budget.left()
        if left < 60 or ("CUDAExecutionProvider" not in env["providers"] and not args.rehearse_on_cpu):
            problems.append(f"bench {name}: not run ({left:.0f} s of the budget left)")
            continue
        log.info("bench %s (%.0f s left)", name, left)
        try:
            if name == "demo":
                if demo is None:
                    problems.append("bench demo: no exported demo bundle")
                    continue
                bundle, ckpt = demo, REPO / "models" / "demo" / "checkpoint"
            else:
                bundle, ckpt = synthetic_bundle(args.work, images)
            res = bench(name, bundle, ckpt, args.out, with_torch, budget.left() - 5, gpu)
        except Exception as exc:
            res = {"name": name, "error": first_line(exc)}
        result["bench"].append(res)
        if res.get("error"):
            problems.append(f"bench {name}: {res['error']}")

    if args.rehearse_on_cpu:
        pass
    elif budget.left() > 60:
        rc, text = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                         str(REPO / "tests" / "test_gpu.py")],
                        budget.left() - 5)
        tail = [line for line in text.strip().splitlines() if line.strip()]
        result["gpu_tests"] = {"exit": rc, "summary": "\n".join(tail[-15:])}
        (args.out / "gpu-tests.log").write_text(text)
        if rc != 0:
            problems.append(f"pytest -m gpu tests/test_gpu.py exited {rc}")
    else:
        problems.append("pytest -m gpu tests/test_gpu.py: not run (out of time budget)")

    result["problems"], result["passed"] = problems, not problems
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=1, default=str))
    text = markdown(result)
    (args.out / "gpu-check.md").write_text(text)
    print(text)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
