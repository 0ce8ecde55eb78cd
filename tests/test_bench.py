"""edgecap-bench end to end on a tiny model: table, JSON in the documented shape, a PNG."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_bench_missing_peer_is_a_note_not_a_crash(tmp_path):
    ckpt = tiny.build(tmp_path / "ckpt")
    res = subprocess.run(
        [sys.executable, "-m", "edgecap.bench", "--model", str(ckpt), "--compare", "nosuchpeer", "--beams", "1",
         "--new-tokens", "3", "--warmup", "0", "--repeat", "1", "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "unknown peer nosuchpeer" in res.stderr


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
