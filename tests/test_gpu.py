"""GPU backends against the CPU fp32 path on real hardware: token parity, greedy and beam 4.

Every test is marked `gpu` and skipped, with the reason, where a CUDA GPU, TensorRT (+ cuda-python)
or onnxruntime-gpu is missing. Bundles are copied first: building engines writes `engines/` into the
bundle, and other tests share the tiny bundles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecap import Captioner, default_bundle_dir
from edgecap.bundle import load_bundle
from edgecap.errors import BundleError
from edgecap.gpu import GPU_BACKENDS, select
from edgecap.gpu.devmem import DeviceTensor
from edgecap.gpu.engines import META_FILE, find_engine_dir
from edgecap.gpu.profiles import default_limits

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parent.parent
PROVIDERS = {"cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}


def skip_reason(backend: str) -> str | None:
    import onnxruntime as ort

    if backend in PROVIDERS:
        if PROVIDERS[backend] not in ort.get_available_providers():
            return f"onnxruntime-gpu with {PROVIDERS[backend]} is not installed"
        if not select.probe_ort_cuda():
            return "no CUDA GPU visible to onnxruntime-gpu"
        return None
    if select.probe_tensorrt_env() is None:
        return "TensorRT, cuda-python or a CUDA GPU is missing"
    return None


@pytest.fixture(params=GPU_BACKENDS)
def backend(request) -> str:
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def ensure_engines(bundle_dir: Path, precision: str = "fp32") -> Path:
    """Build TensorRT engines for the bundle unless fresh ones exist."""
    from edgecap.gpu.trt_build import BuildOptions, build_engines

    bundle = load_bundle(bundle_dir)
    if precision in select.usable_engine_precisions(bundle, select.probe_tensorrt_env(), precision):
        return find_engine_dir(bundle, precision)
    return build_engines(bundle, BuildOptions(precision, default_limits(bundle.manifest)))


def prepared(bundle_dir: Path, backend: str, tmp_root: Path, name: str) -> Path:
    dst = tmp_root / name
    if not dst.exists():
        shutil.copytree(bundle_dir, dst, ignore=shutil.ignore_patterns("engines"))
    if backend == "tensorrt":
        ensure_engines(dst)
    return dst


def check_parity(bundle: Path, backend: str, images, num_beams: int) -> None:
    cpu = Captioner(bundle, precision="fp32", backend="cpu", fused=False)  # the graphs the GPU backends run
    gpu = Captioner(bundle, precision="fp32", backend=backend)
    assert gpu.backend == backend
    want = cpu.caption(images, num_beams=num_beams)
    got = gpu.caption(images, num_beams=num_beams)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.text for c in got] == [c.text for c in want]
    np.testing.assert_allclose([c.score for c in got], [c.score for c in want], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("pair", [("vit", "gpt2"), ("deit", "trocr")])
def test_tiny_models_token_parity(export_tiny, sample_images, tmp_path_factory, backend, pair, num_beams):
    root = tmp_path_factory.getbasetemp() / "gpu-bundles"
    root.mkdir(exist_ok=True)
    bundle = prepared(export_tiny(*pair)[1], backend, root, "-".join(pair))
    check_parity(bundle, backend, sample_images, num_beams)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_demo_bundle_token_parity(tmp_path_factory, sample_images, backend, num_beams):
    demo = default_bundle_dir()
    if demo is None:
        pytest.skip("no demo bundle installed")
    root = tmp_path_factory.getbasetemp() / "gpu-bundles"
    root.mkdir(exist_ok=True)
    bundle = prepared(demo, backend, root, "demo")
    samples = sorted((REPO / "models" / "demo" / "samples").glob("*.png"))[:4]
    check_parity(bundle, backend, [str(p) for p in samples] or sample_images, num_beams)


def test_encoder_outputs_stay_on_the_device(export_tiny, sample_images, tmp_path, backend):
    bundle = prepared(export_tiny("vit", "gpt2")[1], backend, tmp_path, "b")
    cap = Captioner(bundle, precision="fp32", backend=backend)
    encoded = cap.encode(cap.preprocess(sample_images))
    assert encoded and all(isinstance(t, DeviceTensor) and t.shape[0] == len(sample_images) for t in encoded.values())


def test_tensorrt_cuda_graph_parity(export_tiny, sample_images, tmp_path, monkeypatch):
    reason = skip_reason("tensorrt")
    if reason:
        pytest.skip(reason)
    bundle = prepared(export_tiny("vit", "gpt2")[1], "tensorrt", tmp_path, "b")
    monkeypatch.setenv("EDGECAP_CUDA_GRAPH", "1")
    for beams in (1, 4):
        check_parity(bundle, "tensorrt", sample_images, beams)


def test_tensorrt_stale_engines_and_auto(export_tiny, tmp_path):
    reason = skip_reason("tensorrt")
    if reason:
        pytest.skip(reason)
    bundle = prepared(export_tiny("vit", "gpt2")[1], "tensorrt", tmp_path, "b")
    assert Captioner(bundle, precision="fp32").backend == "tensorrt"  # auto: fresh engines win
    meta_path = find_engine_dir(load_bundle(bundle), "fp32") / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["tensorrt_version"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"TensorRT 0\.0\.1.*edgecap build-engine"):
        Captioner(bundle, precision="fp32", backend="tensorrt")
    assert Captioner(bundle, precision="fp32").backend in ("cuda", "cpu")  # auto skips stale engines


def test_ort_tensorrt_caches_engines_beside_the_bundle(export_tiny, sample_images, tmp_path):
    reason = skip_reason("ort-tensorrt")
    if reason:
        pytest.skip(reason)
    bundle = prepared(export_tiny("vit", "gpt2")[1], "ort-tensorrt", tmp_path, "b")
    Captioner(bundle, precision="fp32", backend="ort-tensorrt").caption(sample_images, num_beams=2)
    cache = bundle / "engines" / "ort-trt" / "fp32"
    assert cache.is_dir() and any(cache.iterdir())
