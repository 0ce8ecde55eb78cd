"""The GPU backends' logic, tested without a GPU.

Host memory stands in for device memory (`HostCuda`), and a fake TensorRT engine runs the bundle's
graphs with ONNX Runtime's CPU provider on those buffers. That exercises the device KV cache (slot
writes, ping-pong beam reordering, cross K/V expansion), the TensorRT runner (shapes, addresses,
encoder chunking, CUDA-graph capture flow) and the ONNX Runtime IO-binding runner (bound to "cpu")
end to end, with token parity against the CPU path. Also: profiles, engine metadata and staleness,
`auto` selection, and the errors when GPU packages are missing.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from edgecap import Captioner, manifest as mf
from edgecap.backends import SessionOptions, create_session, resolve_backend
from edgecap.bundle import load_bundle
from edgecap.captioner import DecoderStatePool
from edgecap.cli import main
from edgecap.errors import BundleError, EdgecapError
from edgecap.gpu import cudart, engines as eng, select
from edgecap.gpu.cudart import Cuda
from edgecap.gpu.devmem import DeviceTensor, device_empty, gather_rows, row_runs, write_slot
from edgecap.gpu.ort_cuda import OrtDeviceEncoder, OrtStepRunner
from edgecap.gpu.profiles import ProfileLimits, bundle_profiles, default_limits, graph_profile, ort_trt_profile_options
from edgecap.gpu.stepdecoder import DeviceStepDecoder
from edgecap.gpu.trt_runtime import EngineIO, TrtEncoder, TrtStepRunner

ENV = eng.RuntimeEnv("10.3.0", "Orin", "8.7")


# --- host memory standing in for the device ------------------------------------------------------


def _bytes_at(ptr: int, nbytes: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), np.uint8)


def read(t_ptr: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    return _bytes_at(t_ptr, n).view(dtype).reshape(shape).copy()


class HostCuda(Cuda):
    name = "host"
    supports_graphs = True

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.capturing: list | None = None
        self.launches = 0
        self.syncs = 0

    def malloc(self, nbytes):
        a = np.full(nbytes + 256, 0xFF, np.uint8)  # NaN bit patterns: a missing memset shows up
        ptr = (a.ctypes.data + 255) // 256 * 256
        self.mem[ptr] = a
        return ptr

    def free(self, ptr):
        self.mem.pop(ptr, None)

    def memset(self, ptr, nbytes, stream):
        ctypes.memset(ptr, 0, nbytes)

    def copy(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)

    def copy_2d(self, dst, dpitch, src, spitch, width, height, kind, stream):
        assert width <= dpitch and width <= spitch
        span = lambda p: (height - 1) * p + width  # noqa: E731
        d = as_strided(_bytes_at(dst, span(dpitch)), (height, width), (dpitch, 1))
        s = as_strided(_bytes_at(src, span(spitch)), (height, width), (spitch, 1))
        d[...] = s

    def stream_create(self):
        return 7

    def stream_sync(self, stream):
        self.syncs += 1

    def device_count(self):
        return 1

    def device_info(self):
        return ENV.gpu_name, ENV.compute_capability

    def graph_begin(self, stream):
        self.capturing = []

    def graph_end(self, stream):
        work, self.capturing = self.capturing, None
        return work

    def graph_launch(self, graph_exec, stream):
        self.launches += 1
        for fn in graph_exec:
            fn()


class FakeTrt:
    """The corner of the `tensorrt` module that EngineIO touches."""

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    @staticmethod
    def nptype(dtype):
        return dtype


class FakeEngine:
    """Runs a graph with ONNX Runtime (CPU) on tensors at host addresses, like an ICudaEngine would."""

    def __init__(self, session, graph: mf.GraphSpec, profile, cuda: HostCuda) -> None:
        self.session, self.profile, self.cuda = session, profile, cuda
        self.specs = {t.name: ("input", t) for t in graph.inputs} | {t.name: ("output", t) for t in graph.outputs}
        self.names = list(self.specs)
        self.num_io_tensors = len(self.names)
        self.executions = 0

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.specs[name][0]

    def get_tensor_dtype(self, name):
        return np.dtype(self.specs[name][1].dtype)

    def is_shape_inference_io(self, name):
        return False

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profile[name]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.e = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        if name in self.e.profile:
            lo, _, hi = self.e.profile[name]
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        if self.e.cuda.capturing is not None:
            self.e.cuda.capturing.append(lambda: self._run(shapes, addresses))
        else:
            self._run(shapes, addresses)
        return True

    def _run(self, shapes, addresses):
        self.e.executions += 1
        feeds = {}
        for name, (mode, spec) in self.e.specs.items():
            if mode == "input":
                feeds[name] = read(addresses[name], shapes[name], spec.dtype)
        outputs = [n for n, (m, _) in self.e.specs.items() if m == "output"]
        for name, value in zip(outputs, self.e.session.run(outputs, feeds)):
            value = np.ascontiguousarray(value)
            ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(export_tiny):
    return load_bundle(export_tiny("vit", "gpt2")[1])


@pytest.fixture()
def own_bundle(export_tiny, tmp_path):
    """A private copy (tests write engines/ into it)."""
    dst = tmp_path / "bundle"
    shutil.copytree(export_tiny("vit", "gpt2")[1], dst)
    return load_bundle(dst)


def _sessions(bundle):
    pair = bundle.graphs("fp32")
    so = SessionOptions(threads=1)
    return pair, create_session(bundle, pair.encoder, "cpu", so), create_session(bundle, pair.decoder, "cpu", so)


def _reference_and_swapped(bundle, encoder, decoder):
    ref = Captioner(bundle.path, precision="fp32", backend="cpu", threads=1)
    dev = Captioner(bundle.path, precision="fp32", backend="cpu", threads=1)
    dev._encoder, dev._decoders = encoder, DecoderStatePool(lambda: decoder, limit=1)
    return ref, dev


def _assert_same_captions(ref, dev, images, **gen):
    want, got = ref.caption(images, **gen), dev.caption(images, **gen)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.text for c in got] == [c.text for c in want]
    np.testing.assert_allclose([c.score for c in got], [c.score for c in want], rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        assert [x.token_ids for x in a.alternatives] == [x.token_ids for x in b.alternatives]


# --- device copies ------------------------------------------------------------------------------------


def test_write_slot_and_gather_rows_match_numpy():
    cuda = HostCuda()
    rng = np.random.default_rng(0)
    for axis, shape in ((3, (5, 2, 3, 7)), (2, (5, 2, 7, 3))):
        host = rng.normal(size=shape).astype(np.float16)
        cache = device_empty(cuda, shape, np.float16)
        cuda.htod(cache.ptr, host, 0)
        new_shape = shape[:axis] + (1,) + shape[axis + 1 :]
        new_host = rng.normal(size=new_shape).astype(np.float16)
        new = device_empty(cuda, new_shape, np.float16)
        cuda.htod(new.ptr, new_host, 0)
        write_slot(cuda, cache, new, axis, 4, 0)
        expect = host.copy()
        np.moveaxis(expect, axis, 0)[4] = np.moveaxis(new_host, axis, 0)[0]
        np.testing.assert_array_equal(read(cache.ptr, shape, np.float16), expect)

        rows = np.array([3, 4, 0, 0, 2])
        assert row_runs(rows) == [(0, 3, 2), (2, 0, 1), (3, 0, 1), (4, 2, 1)]
        full = device_empty(cuda, shape, np.float16)
        gather_rows(cuda, full, cache, rows, 0)
        np.testing.assert_array_equal(read(full.ptr, shape, np.float16), expect[rows])
        part = device_empty(cuda, shape, np.float16)
        cuda.memset(part.ptr, part.nbytes, 0)
        gather_rows(cuda, part, cache, rows, 0, axis=axis, filled=3)
        got = np.moveaxis(read(part.ptr, shape, np.float16), axis, -1)
        np.testing.assert_array_equal(got[..., :3], np.moveaxis(expect[rows], axis, -1)[..., :3])
        assert not got[..., 3:].any()
    with pytest.raises(ValueError):
        write_slot(cuda, cache, cache, 2, 0, 0)


# --- the device decoder through both runners, against the CPU path -------------------------------


def _trt_models(bundle, cuda, limits, cuda_graph=False):
    pair, enc_sess, dec_sess = _sessions(bundle)
    profiles = bundle_profiles(pair, limits)
    enc_engine = FakeEngine(enc_sess, pair.encoder, profiles["encoder"], cuda)
    dec_engine = FakeEngine(dec_sess, pair.decoder, profiles["decoder"], cuda)
    enc = TrtEncoder(EngineIO(FakeTrt, enc_engine, pair.encoder, "enc.engine"), pair.encoder, cuda, 7)
    arch = bundle.manifest.architecture
    runner = TrtStepRunner(EngineIO(FakeTrt, dec_engine, pair.decoder, "dec.engine"), arch, cuda, 7, limits,
                           "run `edgecap build-engine`", cuda_graph=cuda_graph)
    return enc, DeviceStepDecoder(runner, arch, pair.decoder), enc_engine, dec_engine


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_runner_token_parity(tiny_bundle, sample_images, cuda_graph):
    cuda = HostCuda()
    gen = tiny_bundle.manifest.generation
    limits = ProfileLimits(2, 8, gen.max_new_tokens, 2, 4, gen.max_new_tokens)  # 3 images: encoder runs in 2 chunks
    enc, dec, enc_engine, dec_engine = _trt_models(tiny_bundle, cuda, limits, cuda_graph)
    ref, dev = _reference_and_swapped(tiny_bundle, enc, dec)
    encoded = dev.encode(dev.preprocess(sample_images))
    assert all(isinstance(t, DeviceTensor) for t in encoded.values()) and enc_engine.executions == 2
    _assert_same_captions(ref, dev, sample_images, num_beams=1)
    _assert_same_captions(ref, dev, sample_images, num_beams=4, num_return_sequences=2)
    _assert_same_captions(ref, dev, sample_images[:1], num_beams=3, max_new_tokens=5)  # other shapes reuse nothing stale
    assert (cuda.launches > 0) == cuda_graph


def test_tensorrt_runner_refuses_shapes_beyond_the_profile(tiny_bundle, sample_images):
    cuda = HostCuda()
    enc, dec, *_ = _trt_models(tiny_bundle, cuda, ProfileLimits(1, 4, 6, 1, 1, 6))
    _, dev = _reference_and_swapped(tiny_bundle, enc, dec)
    with pytest.raises(BundleError, match=r"profile allows 4 rows .*edgecap build-engine"):
        dev.caption(sample_images, num_beams=4, max_new_tokens=6)
    with pytest.raises(BundleError, match=r"profile allows 6 new tokens"):
        dev.caption(sample_images[:1], num_beams=1, max_new_tokens=7)


def test_ort_iobinding_runner_token_parity(tiny_bundle, sample_images):
    # device_type "cpu": the real IO-binding code path, with host buffers as the "device"
    cuda = HostCuda()
    pair, enc_sess, dec_sess = _sessions(tiny_bundle)
    arch = tiny_bundle.manifest.architecture
    enc = OrtDeviceEncoder(enc_sess, pair.encoder, device_type="cpu")
    runner = OrtStepRunner(dec_sess, pair.decoder, arch, cuda, 7, device_type="cpu")
    ref, dev = _reference_and_swapped(tiny_bundle, enc, DeviceStepDecoder(runner, arch, pair.decoder))
    _assert_same_captions(ref, dev, sample_images, num_beams=1)
    _assert_same_captions(ref, dev, sample_images, num_beams=4)
    assert cuda.syncs > 0  # ORT runs on its own stream: the cache copies are synchronised


# --- profiles -----------------------------------------------------------------------------------------


def test_profile_shapes_from_the_manifest(tiny_bundle):
    man = tiny_bundle.manifest
    arch, gen = man.architecture, man.generation
    limits = default_limits(man)
    assert limits.max_batch == 8 and limits.max_beams == max(4, gen.num_beams)
    assert limits.max_new_tokens == max(gen.max_new_tokens, min(64, arch.max_positions - 1))
    assert limits.opt_new_tokens == gen.max_new_tokens
    pair = tiny_bundle.graphs("fp32")
    enc = graph_profile(pair.encoder, "encoder", limits)
    (px,) = [t for t in pair.encoder.inputs if t.name == mf.PIXEL_VALUES]
    assert enc == {mf.PIXEL_VALUES: ((1, *px.shape[1:]), (8, *px.shape[1:]), (8, *px.shape[1:]))}
    dec = graph_profile(pair.decoder, "decoder", limits)
    h, d, rows, T = arch.decoder_heads, arch.head_dim, limits.max_rows, limits.max_new_tokens
    assert mf.STEP not in dec  # fixed shape [1]
    assert dec[mf.INPUT_IDS] == ((1, 1), (limits.opt_rows, 1), (rows, 1))
    assert dec[mf.past_key(0)] == ((1, h, d, 1), (limits.opt_rows, h, d, gen.max_new_tokens), (rows, h, d, T))
    assert dec[mf.past_value(arch.decoder_layers - 1)][2] == (rows, h, T, d)
    assert dec[mf.cross_key(0)][2] == (rows, h, d, arch.encoder_seq_len)
    opts = ort_trt_profile_options(dec)
    assert f"{mf.past_key(0)}:1x{h}x{d}x1" in opts["trt_profile_min_shapes"].split(",")
    assert f"{mf.INPUT_IDS}:{rows}x1" in opts["trt_profile_max_shapes"].split(",")
    assert len(opts["trt_profile_opt_shapes"].split(",")) == len(dec)
    custom = default_limits(man, max_batch=2, max_beams=3, max_new_tokens=9)
    assert graph_profile(pair.decoder, "decoder", custom)[mf.past_key(0)][2] == (6, h, d, 9)
    with pytest.raises(ValueError):
        ProfileLimits(1, 1, 1, 2, 1, 1)


# --- engine metadata and staleness ------------------------------------------------------------------


def _meta(bundle, env=ENV, limits=None, precision="fp32", **overrides):
    pair = bundle.graphs(precision)
    limits = limits or default_limits(bundle.manifest)
    profiles = bundle_profiles(pair, limits)
    files = {
        role: eng.EngineFile(f"{role}.engine", g.file, bundle.manifest.files[g.file],
                             {n: [list(s) for s in v] for n, v in profiles[role].items()})
        for role, g in (("encoder", pair.encoder), ("decoder", pair.decoder))
    }
    fields = dict(precision=precision, tensorrt_version=env.tensorrt_version, gpu_name=env.gpu_name,
                  compute_capability=env.compute_capability, limits=limits.to_dict(),
                  build_options={"workspace_mb": None}, engines=files)
    fields.update(overrides)
    return eng.EngineMeta(**fields)


def _install_engines(bundle, meta):
    d = bundle.path / "engines" / meta.precision
    eng.write_meta(d, meta)
    for e in meta.engines.values():
        (d / e.engine).write_bytes(b"engine")
    return d


def test_engine_metadata_roundtrip_and_staleness(own_bundle):
    b = own_bundle
    meta = _meta(b)
    d = _install_engines(b, meta)
    assert eng.find_engine_dir(b, "fp32") == d
    back = eng.read_meta(d)
    assert back == meta and back.profile_limits == default_limits(b.manifest)
    lim = back.profile_limits
    assert eng.staleness(back, b, "fp32", ENV, d, need_rows=lim.max_rows, need_new_tokens=lim.max_new_tokens) is None

    cases = {
        "TensorRT 10.3.0, this is TensorRT 10.7.0": dict(env=eng.RuntimeEnv("10.7.0", "Orin", "8.7")),
        "this GPU is NVIDIA H100": dict(env=eng.RuntimeEnv("10.3.0", "NVIDIA H100", "9.0")),
        "the decoder graph fp32/decoder.onnx changed": dict(
            meta=_meta(b, engines={**meta.engines, "decoder": eng.EngineFile("decoder.engine", "fp32/decoder.onnx", "0" * 64, {})})
        ),
        f"profile allows {lim.max_rows} rows": dict(need_rows=lim.max_rows + 1),
        f"profile allows {lim.max_new_tokens} new tokens": dict(need_new_tokens=lim.max_new_tokens + 1),
    }
    for expected, case in cases.items():
        m = case.get("meta", meta)
        reason = eng.staleness(m, b, "fp32", case.get("env", ENV), d, case.get("need_rows"), case.get("need_new_tokens"))
        assert reason is not None and expected in reason, (expected, reason)
        with pytest.raises(BundleError) as info:
            eng.check_engines(m, b, "fp32", case.get("env", ENV), d, case.get("need_rows"), case.get("need_new_tokens"))
        msg = str(info.value)
        assert "\n" not in msg and f"edgecap build-engine {b.path} --precision fp32" in msg and expected in msg
    assert "larger --max-batch" in eng.rebuild_hint(b, "fp32", "the profile allows 32 rows")

    (d / "decoder.engine").unlink()
    assert "decoder.engine is missing" in eng.staleness(meta, b, "fp32", ENV, d)
    (d / eng.META_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        eng.read_meta(d)
    (d / eng.META_FILE).write_text(json.dumps({"format": eng.FORMAT, "format_version": 1, "precision": "fp32"}))
    with pytest.raises(BundleError, match="malformed"):
        eng.read_meta(d)


def test_engine_dirs_fall_back_to_the_user_cache(own_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECAP_CACHE_DIR", str(tmp_path / "cache"))
    inside, cache = eng.engine_dirs(own_bundle, "fp32")
    assert inside == own_bundle.path / "engines" / "fp32"
    assert cache.is_relative_to(tmp_path / "cache") and eng.bundle_key(own_bundle, "fp32") in str(cache)
    (own_bundle.path / "engines").write_text("a file where the directory should be")  # not creatable
    assert eng.writable_dir([inside, cache]) == cache
    assert eng.engine_dirs(own_bundle, "fp32", kind="ort-trt")[1].parts[-2:] == ("ort-trt", "fp32")


# --- backend="auto" --------------------------------------------------------------------------------


def _probes(env=None, ort_cuda=False, calls=None):
    def trt():
        if calls is not None:
            calls.append("tensorrt")
        return env

    return select.Probes(tensorrt_env=trt, ort_cuda=lambda: ort_cuda)


def test_auto_selection(own_bundle):
    b = own_bundle
    calls: list = []
    assert select.choose_backend(b, probes=_probes(ENV, False, calls)) == "cpu"
    assert calls == []  # no engines: TensorRT is not even probed
    assert select.choose_backend(b, probes=_probes(ENV, True)) == "cuda"
    _install_engines(b, _meta(b))
    assert select.choose_backend(b, probes=_probes(ENV, False)) == "tensorrt"
    assert select.choose_backend(b, "fp32", probes=_probes(ENV, True)) == "tensorrt"
    assert select.choose_backend(b, probes=_probes(None, True)) == "cuda"  # TensorRT missing
    assert select.choose_backend(b, probes=_probes(eng.RuntimeEnv("10.7", "Orin", "8.7"), True)) == "cuda"  # stale
    assert select.choose_backend(b, probes=_probes(eng.RuntimeEnv("10.7", "Orin", "8.7"), False)) == "cpu"
    assert select.precision_preference(b, "tensorrt", _probes(ENV)) == ("fp32",)
    assert select.precision_preference(b, "cuda")[0] == "fp16"
    # the real probes on this machine (no GPU packages): auto is the CPU, as before
    assert resolve_backend("auto", b) in ("cpu", "cuda", "tensorrt")
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert resolve_backend("auto", b) == "cpu" and resolve_backend(None) == "cpu"
    with pytest.raises(EdgecapError, match="unknown backend 'gpu'"):
        resolve_backend("gpu")


# --- missing GPU packages ---------------------------------------------------------------------------


def test_build_engine_without_tensorrt_says_what_to_install(own_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert main(["build-engine", str(own_bundle.path), "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    from edgecap.extras import install_command

    assert len(err) == 1 and install_command("tensorrt") in err[0] and "JetPack" in err[0]
    assert main(["build-engine", str(own_bundle.path), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "Q/DQ" in err and "Traceback" not in err
    assert main(["build-engine", str(own_bundle.path / "nope")]) == 2
    assert "bundle directory not found" in capsys.readouterr().err


def test_gpu_backends_without_packages_raise_clear_errors(tiny_bundle, monkeypatch):
    import onnxruntime as ort

    for backend, provider in (("cuda", "CUDAExecutionProvider"), ("ort-tensorrt", "TensorrtExecutionProvider")):
        if provider in ort.get_available_providers():
            continue
        with pytest.raises(EdgecapError, match=rf"needs onnxruntime-gpu with {provider}.*\[gpu\]"):
            Captioner(tiny_bundle.path, precision="fp32", backend=backend)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EdgecapError, match=r"TensorRT is not installed.*pip install '[^']*\[tensorrt\]'"):
        Captioner(tiny_bundle.path, precision="fp32", backend="tensorrt")


def test_cuda_runtime_missing_is_named(monkeypatch):
    monkeypatch.setattr(cudart, "_LOADED", {})
    monkeypatch.setattr(cudart, "_import_cuda_python", lambda: None)
    monkeypatch.setattr(cudart, "_libcudart_candidates", lambda: ["/nonexistent/libcudart.so.12"])
    with pytest.raises(EdgecapError, match=r"cuda-python is not installed"):
        cudart.load_cuda(require_cuda_python=True)
    with pytest.raises(EdgecapError, match=r"libcudart"):
        cudart.load_cuda()


def test_gpu_modules_import_nothing_heavy():
    script = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorrt", "cuda", "torch", "transformers", "onnx"):
                    raise ImportError(f"{name} is blocked")
        sys.meta_path.insert(0, _Block())
        import edgecap.cli, edgecap.gpu, edgecap.gpu.ort_cuda, edgecap.gpu.trt_runtime, edgecap.gpu.trt_build
        import edgecap.gpu.select
        edgecap.cli.build_parser()
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
