"""Reduced precisions: every one exports and loads for every family, and the agreement gate is real."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tiny
from edgecap import BundleError, Captioner
from edgecap.bundle import load_bundle
from edgecap_export import exporter
from edgecap_export.exporter import ExportOptions, export

ALL = ("fp32", "int8", "fp16", "int4", "int8-qdq")


@pytest.mark.parametrize("encoder,decoder", tiny.PAIRS)
def test_every_precision_exports_and_loads(tmp_path, sample_images, encoder, decoder):
    ckpt = tiny.build(tmp_path / "ckpt", encoder, decoder)
    bundle = export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=ALL, min_agreement=0.0))
    b = load_bundle(bundle)
    assert set(b.precisions) == set(ALL)
    for prec in ALL:
        v = b.manifest.verification[prec]
        assert v.reference == ("pytorch" if prec == "fp32" else "fp32")
        assert 0.0 <= v.caption_agreement <= 1.0 and 0.0 <= v.token_agreement <= 1.0 and v.images > 0
        caps = Captioner(bundle, precision=prec).caption(sample_images, num_beams=2)
        assert len(caps) == 3 and all(c.token_ids for c in caps)
    # fp16 keeps norms/softmax in fp32: even on these chaotic random models it nearly always agrees
    assert b.manifest.verification["fp16"].caption_agreement >= 0.9
    graphs = b.manifest.graphs
    assert graphs["int4"].encoder.file == "int8/encoder.onnx"  # shared, not duplicated
    dtypes = {t.name: t.dtype for t in graphs["fp16"].decoder.inputs}
    assert dtypes["past_key.0"] == "float16"


def test_unknown_precision_is_refused(tmp_path):
    ckpt = tiny.build(tmp_path / "ckpt")
    with pytest.raises(exporter.ExportError, match="unknown precision.*int3.*available: fp32, int8, fp16, int4, int8-qdq"):
        export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32", "int3")))


def test_corrupted_precision_is_measured_and_refused(tmp_path, monkeypatch, caplog):
    """Break one weight of the fp16 decoder: agreement must drop and export must not write fp16, and
    say so with an exception (CLI: exit 1) unless a partial bundle is accepted."""
    real = exporter._build_precision

    def corrupting(prec, root, enc, dec, options, done, *rest):
        pair = real(prec, root, enc, dec, options, done, *rest)
        if prec == "fp16":
            path = root / "fp16" / "decoder.onnx"
            model = onnx.load(str(path))
            for init in model.graph.initializer:
                if init.name == "lm_head.weight":
                    w = numpy_helper.to_array(init)
                    rng = np.random.default_rng(0)
                    init.CopyFrom(numpy_helper.from_array(rng.permutation(w, axis=1), init.name))
            onnx.save_model(model, str(path))
        return pair

    ckpt = tiny.build(tmp_path / "ckpt")
    # the default gate: teacher-forced top-1 agreement with fp32 on decisive steps
    good = export(str(ckpt), tmp_path / "good", ExportOptions(precisions=("fp32", "fp16")))
    v = load_bundle(good).manifest.verification["fp16"]
    assert v.decisive_agreement >= 0.97 and v.decisive_steps > 0 and v.mean_kl < 0.05
    assert v.eval_images == "synthetic" and v.decisive_margin == 1.0

    monkeypatch.setattr(exporter, "_build_precision", corrupting)
    with pytest.raises(exporter.PartialExportError, match="written without fp16.*--allow-partial") as info:
        export(str(ckpt), tmp_path / "bad", ExportOptions(precisions=("fp32", "fp16")))
    assert info.value.refused.keys() == {"fp16"}
    bad = info.value.bundle  # the rest is written: a long export is not lost
    manifest = load_bundle(bad).manifest
    assert list(manifest.graphs) == ["fp32"] and "fp16" not in manifest.verification
    assert not (bad / "fp16").exists()
    assert any("fp16 not written" in r.getMessage() and "decisive steps" in r.getMessage() for r in caplog.records)
    with pytest.raises(BundleError, match="no 'fp16' graphs in this bundle; it has: fp32"):
        Captioner(bad, precision="fp16")
    # a user who accepts a partial bundle says so
    partial = export(str(ckpt), tmp_path / "partial", ExportOptions(precisions=("fp32", "fp16"), allow_partial=True))
    assert list(load_bundle(partial).manifest.graphs) == ["fp32"]


def test_demo_checkpoint_exports_int8_and_int4_with_default_options(tmp_path):
    """The README's export command on the shipped demo checkpoint keeps every precision asked for."""
    from conftest import REPO

    bundle = export(str(REPO / "models" / "demo" / "checkpoint"), tmp_path / "demo",
                    ExportOptions(precisions=("fp32", "int8", "int4")))
    verification = load_bundle(bundle).manifest.verification
    assert set(verification) == {"fp32", "int8", "int4"}
    for prec in ("int8", "int4"):
        assert verification[prec].decisive_agreement >= 0.97


def test_weights_live_once_in_each_precisions_weights_file(tmp_path, sample_images):
    """Every large tensor of a precision's graphs (plain and fused) is in <precision>/weights.bin, once:
    no graph file nears protobuf's 2 GiB limit, the fused form costs no second copy of the weights, and
    the weights file is listed and checksummed like every other file."""
    import onnx

    ckpt = tiny.build(tmp_path / "ckpt")
    bundle = export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32", "int8"), min_agreement=0.0))
    b = load_bundle(bundle)
    for prec in ("fp32", "int8"):
        assert f"{prec}/weights.bin" in b.manifest.files
        graphs = [bundle / prec / n for n in ("encoder.onnx", "decoder.onnx", "encoder.fused.onnx", "decoder.fused.onnx")]
        assert all(b.external[f"{prec}/{g.name}"] == (f"{prec}/weights.bin",) for g in graphs)
        # the weights file holds less than the two forms' initializers together: they share tensors
        total = sum(len(t.raw_data) for g in graphs for t in onnx.load(str(g)).graph.initializer)
        assert (bundle / prec / "weights.bin").stat().st_size < 0.75 * total
    plain = Captioner(bundle, precision="fp32", fused=False).caption(sample_images)
    assert [c.token_ids for c in Captioner(bundle, precision="fp32").caption(sample_images)] == [c.token_ids for c in plain]
    data = bundle / "fp32" / "weights.bin"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="weights.bin: checksum mismatch"):
        load_bundle(bundle)


def test_evaluation_images_are_encoded_few_at_a_time_when_large():
    """Export's quality judging encodes up to 8 ViT-size images per call but one Donut page (2560x1920):
    two at once ran a 24 GiB machine out of memory."""
    from edgecap_export.verify import images_per_call

    assert images_per_call(np.zeros((32, 3, 224, 224), np.float32)) == 8
    assert images_per_call(np.zeros((2, 3, 2560, 1920), np.float32)) == 1
    assert 1 < images_per_call(np.zeros((2, 3, 768, 768), np.float32)) < 8
