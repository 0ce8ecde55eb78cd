"""edgecap-bench end to end on a tiny model: table, JSON in the documented shape, a PNG; its
command line; the per-precision floor probes; a peer that cannot run as a row, not a crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tiny

ROW_KEYS = {
    "engine": str, "backend": str, "precision": str, "batch_size": int, "num_beams": int, "new_tokens": int,
    "latency_ms_p50": float, "latency_ms_p90": float, "images_per_s": float, "tokens_per_s": float,
    "peak_rss_mb": float,
}


def test_bench_model_compare_pytorch(tmp_path):
    pytest.importorskip("matplotlib")
    ckpt = tiny.build(tmp_path / "ckpt")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = subprocess.run(
        [sys.executable, "-m", "edgecap.bench", "--model", str(ckpt), "--compare", "pytorch",
         "--precision", "fp32,int8", "--beams", "1,2", "--batch-sizes", "1,2", "--new-tokens", "5",
         "--threads", "1", "--warmup", "0", "--repeat", "2", "--workdir", str(tmp_path / "work"),
         "--json", str(out_json), "--plot", str(out_png)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "vs torch" in res.stdout.splitlines()[0]
    data = json.loads(out_json.read_text())
    assert {"machine", "model", "rows"} <= set(data)
    assert data["machine"]["read_gb_per_s"] > 0 and data["machine"]["matmul_gflop_per_s"] > 0
    # each precision's floor comes from its own kernel: int8 rows from the int8 probe, not fp32's
    kernels = data["machine"]["kernels"]
    assert {"fp32", "int8"} <= set(kernels)
    arch = data["model"]["architecture"]
    for r in data["rows"]:
        if r["engine"] == "edgecap":
            rate = kernels[r["precision"]]["gweights_per_s_by_rows"][str(r["batch_size"] * r["num_beams"])]
            assert r["floor_decoder_step_ms"] == pytest.approx(arch["decoder_step_params"] / (rate * 1e9) * 1000)
    rows = data["rows"]
    combos = {(r["engine"], r["precision"], r["batch_size"], r["num_beams"]) for r in rows}
    for engine, prec in (("edgecap", "fp32"), ("edgecap", "int8"), ("pytorch", "fp32")):
        for batch in (1, 2):
            for beams in (1, 2):
                assert (engine, prec, batch, beams) in combos
    for r in rows:
        for key, tp in ROW_KEYS.items():
            assert isinstance(r[key], tp), key
        assert r["latency_ms_p90"] >= r["latency_ms_p50"] > 0 and r["peak_rss_mb"] > 10
        assert r["tokens_per_s"] == pytest.approx(r["images_per_s"] * 5, rel=1e-6)
        if r["engine"] == "edgecap":
            assert r["preprocess_ms"] > 0 and r["bundle_mb"] > 0 and r["load_s"] > 0
            assert r["decoder_step_ms"] > 0 and r["floor_decoder_step_ms"] > 0 and r["encoder_ms"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # RESULTS.md's tables come from this JSON through bench/report.py
    report = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "report.py"), str(out_json)],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert "### Targets (issue 20)" in lines and "| int8 greedy, batch 1 | ≤ 0.2 × PyTorch |" in report.stdout
    assert sum(line.startswith("| edgecap | int8 |") for line in lines) == 4  # one per batch x beams case
    assert any(line.startswith("| int8 |") for line in lines)  # the kernel-rate table


def test_bench_unknown_peer_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "edgecap.bench", "--synthetic", "vit-gpt2-base", "--compare",
                          "pytorch,nosuchpeer"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown peer nosuchpeer (available: pytorch, pytorch-cuda, optimum, openvino)" in res.stderr
    assert "Traceback" not in res.stderr


def test_bench_help_and_version():
    from edgecap import __version__
    from edgecap.benchpeers import PEERS

    res = subprocess.run([sys.executable, "-m", "edgecap.bench", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())  # argparse wraps lines
    assert "--warmup N untimed calls of each case before it is timed (default: 1)" in text
    assert "--repeat N timed calls of each case; p50/p90 are over them (default: 3)" in text
    assert set(PEERS) == {"pytorch", "pytorch-cuda", "optimum", "openvino"}
    for name in PEERS:
        assert f"  {name} " in res.stdout, name  # the epilog's peer list
    assert "--peer-python" in text and "exit codes:" in text
    res = subprocess.run([sys.executable, "-m", "edgecap.bench", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"edgecap-bench (edgecap) {__version__}"


def _bench(tmp_path, *extra):
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        tiny.build(ckpt)
    out = tmp_path / "b.json"
    res = subprocess.run(
        [sys.executable, "-m", "edgecap.bench", "--model", str(ckpt), "--beams", "1", "--new-tokens", "3",
         "--threads", "1", "--warmup", "0", "--repeat", "1", "--workdir", str(tmp_path / "work"), "--json", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )
    return res, (json.loads(out.read_text())["rows"] if out.exists() else None)


def test_bench_unavailable_peer_is_a_failed_row(tmp_path):
    import importlib.util

    if importlib.util.find_spec("optimum") is not None:
        pytest.skip("optimum is installed here: the OpenVINO peer is not unavailable")
    res, rows = _bench(tmp_path, "--compare", "pytorch,openvino", "--precision", "fp32,int8")
    assert res.returncode == 1, res.stderr  # some engine failed; the others are still measured
    failed = [r for r in rows if r["error"]]
    assert {(r["engine"], r["precision"]) for r in failed} == {("openvino", "fp32"), ("openvino", "int8")}
    assert all(r["error"].startswith("not installed: optimum") and r["latency_ms_p50"] is None for r in failed)
    ok = {(r["engine"], r["precision"]) for r in rows if not r["error"]}
    assert ok == {("edgecap", "fp32"), ("edgecap", "int8"), ("pytorch", "fp32")}
    table = res.stdout.splitlines()
    assert any(line.startswith("openvino") and "failed: not installed: optimum" in line for line in table)
    assert "Traceback" not in res.stderr

    # a peer interpreter that cannot start, and one that dies without rows: each a failed row, named
    res, rows = _bench(tmp_path, "--compare", "pytorch", "--peer-python", str(tmp_path / "no-such-python"))
    assert res.returncode == 1
    [row] = [r for r in rows if r["engine"] == "pytorch"]
    assert row["error"].startswith(f"cannot start {tmp_path / 'no-such-python'}")
    dying = tmp_path / "dying-python"
    dying.write_text("#!/bin/sh\necho 'Fatal Python error: Segmentation fault' >&2\nexit 139\n")
    dying.chmod(0o755)
    res, rows = _bench(tmp_path, "--compare", "pytorch", "--peer-python", str(dying))
    assert res.returncode == 1
    [row] = [r for r in rows if r["engine"] == "pytorch"]
    assert row["error"] == "process failed (Fatal Python error: Segmentation fault)"


def test_bench_pytorch_cuda_without_cuda_is_a_failed_row(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch has a CUDA device: the pytorch-cuda peer runs (bench/gpu_check.sh times it)")
    res, rows = _bench(tmp_path, "--compare", "pytorch-cuda", "--precision", "fp32,fp16")
    assert res.returncode == 1, res.stderr
    failed = [r for r in rows if r["engine"] == "pytorch-cuda"]
    assert {(r["precision"], r["backend"]) for r in failed} == {("fp32", "cuda"), ("fp16", "cuda")}
    assert all("sees no CUDA device" in r["error"] and r["latency_ms_p50"] is None for r in failed)
    assert {(r["engine"], r["precision"]) for r in rows if not r["error"]} == {("edgecap", "fp32"), ("edgecap", "fp16")}
    assert "Traceback" not in res.stderr


def test_bench_gpu_backend_without_gpu_is_a_note(tmp_path):
    ckpt = tiny.build(tmp_path / "ckpt")
    out = tmp_path / "b.json"
    res = subprocess.run(
        [sys.executable, "-m", "edgecap.bench", "--model", str(ckpt), "--backend", "cpu,cuda", "--beams", "1",
         "--new-tokens", "3", "--warmup", "0", "--repeat", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    try:
        import onnxruntime

        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda = False
    assert res.returncode == 0, res.stderr
    backends = {r["backend"] for r in json.loads(out.read_text())["rows"]}
    if has_cuda:
        assert backends == {"cpu", "cuda"}
    else:
        assert backends == {"cpu"} and "onnxruntime-gpu" in res.stderr


def test_floor_probes_per_precision_are_positive():
    from edgecap.benchfloors import KERNELS, PROBE_PRECISIONS, floor_estimate, measure_floors
    from edgecap.manifest import Architecture

    floors = measure_floors(1, "cpu", PROBE_PRECISIONS, rows=(1, 4))
    assert set(floors["kernels"]) == set(PROBE_PRECISIONS)
    for kernel, rate in floors["kernels"].items():
        assert rate["read_gb_per_s"] > 0 and rate["matmul_gflop_per_s"] > 0, kernel
        assert set(rate["gweights_per_s_by_rows"]) == {"1", "4"} and min(rate["gweights_per_s_by_rows"].values()) > 0
    fields = {f: 1 for f in Architecture.__dataclass_fields__}
    arch = Architecture(**{**fields, "encoder_flops": 10**10, "decoder_step_params": 10**8})
    for precision in KERNELS:
        est = floor_estimate(arch, precision, 1, 4, floors)
        assert est["encoder_ms"] > 0 and est["decoder_step_ms"] > 0, precision
    # the int4 bundle's encoder is the int8 one, its step the 4-bit kernel's
    int4, int8 = floor_estimate(arch, "int4", 1, 1, floors), floor_estimate(arch, "int8", 1, 1, floors)
    assert int4["encoder_ms"] == int8["encoder_ms"]
    assert int4["decoder_step_ms"] == pytest.approx(1e8 / (floors["kernels"]["int4"]["gweights_per_s"] * 1e9) * 1000)


def test_shipped_probes_are_what_the_exporter_writes():
    """The probe graphs in edgecap/data are regenerated from the exporter's own graph code: a change
    to how a precision builds its products must come with new probes (python -m edgecap_export.probe)."""
    onnx = pytest.importorskip("onnx")
    from edgecap.benchfloors import PROBE_PRECISIONS, probe_file
    from edgecap_export.probe import probe_model

    for precision in PROBE_PRECISIONS:
        assert probe_model(precision).SerializeToString() == probe_file(precision).read_bytes(), precision
    ops = {p: {n.op_type: n for n in onnx.load(str(probe_file(p)), load_external_data=False).graph.node}
           for p in ("int8", "int4")}
    assert {"ReduceMax", "QuantizeLinear", "MatMulInteger"} <= set(ops["int8"])  # per-row activations
    attrs = {a.name: a.i for a in ops["int4"]["MatMulNBits"].attribute}
    assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 32, 4)


def test_bench_florence2_scenario_at_toy_size(tmp_path):
    """`--synthetic florence2-base`'s path at toy size: a Florence-2 checkpoint exported and timed on
    its <CAPTION> task, PyTorch's generate() given the same task's input_ids, greedy and beam 3, fp32
    and int8; a peer that cannot run is its row (timings at base size are the lead's, on a quiet machine)."""
    import tiny_florence2

    ckpt = tiny_florence2.build(tmp_path / "ckpt")
    out_json = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, "-m", "edgecap.bench", "--model", str(ckpt), "--compare", "pytorch",
         "--precision", "fp32,int8", "--beams", "1,3", "--new-tokens", "4", "--threads", "1", "--warmup", "0",
         "--repeat", "1", "--workdir", str(tmp_path / "work"), "--json", str(out_json)],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out_json.read_text())
    assert data["model"]["architecture"]["encoder_prompt"] is True
    combos = {(r["engine"], r["precision"], r["num_beams"]) for r in data["rows"] if r["latency_ms_p50"]}
    assert combos == {("edgecap", "fp32", 1), ("edgecap", "int8", 1), ("edgecap", "fp32", 3), ("edgecap", "int8", 3),
                      ("pytorch", "fp32", 1), ("pytorch", "fp32", 3)}


def test_bench_knows_the_florence2_base_scenario():
    from edgecap.bench import build_parser
    from edgecap_export.peers import SYNTHETIC
    from edgecap_export.synthetic import FLORENCE2_BASE_VISION, davit_tokens

    assert build_parser().parse_args(["--synthetic", "florence2-base"]).synthetic in SYNTHETIC
    assert davit_tokens(FLORENCE2_BASE_VISION, (768, 768)) == 577  # 1 pooled + 24 x 24
