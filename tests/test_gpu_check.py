"""bench/gpu_check.sh where there is no GPU: one line, exit 0, nothing written (never a fake pass);
and bench/gpu_check.py's verdict: an error or a GPU fp32 caption unlike the CPU's fails the check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi and subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.startswith("GPU "):
        return True
    return Path("/etc/nv_tegra_release").exists()


def _check(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "OUT": str(tmp_path / "out"), "EDGECAP_GPU_SITE": str(tmp_path / "site")}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


@pytest.fixture
def no_gpu_here():
    if _has_gpu():
        pytest.skip("this machine has a GPU: bench/gpu_check.sh checks it instead")


def test_no_gpu_prints_the_line_and_exits_0(tmp_path, no_gpu_here):
    res = _check(tmp_path, os.environ["PATH"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["no GPU: nothing checked"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "site").exists()


def test_a_driver_without_a_device_is_no_gpu(tmp_path, no_gpu_here):
    """nvidia-smi installed but no device (what it prints then, with its exit status 6)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    res = _check(tmp_path, f"{fake}:{os.environ['PATH']}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["no GPU: nothing checked"]
    assert not (tmp_path / "out").exists()


def _row(precision: str, greedy: int, beam: int, **extra) -> dict:
    return {"bundle": "b", "backend": "cuda", "precision": precision, "images": 6,
            "beams1_equal_cpu_fp32": greedy, "beams4_equal_cpu_fp32": beam, **extra}


def test_verdict_gates_fp32_and_errors_not_fp16_or_skipped_rows():
    from gpu_check import gated_failures

    assert gated_failures([_row("fp32", 6, 6), _row("fp16", 4, 5),
                           {"bundle": "(all)", "backend": "tensorrt", "skipped": "skipped: no TensorRT"}]) == []
    assert gated_failures([_row("fp32", 6, 5)]) == ["b fp32 cuda: beam 4: 5/6 captions equal to CPU fp32"]
    assert gated_failures([{"bundle": "b", "error": "not run: out of time budget"}]) == ["b: not run: out of time budget"]
    assert gated_failures([_row("fp16", 0, 0, error="RuntimeError: CUDA failure")]) == ["b fp16 cuda: RuntimeError: CUDA failure"]
