"""Bundle validation: a bad bundle fails at load with one clear message naming the file."""

from __future__ import annotations

import json
import shutil

import pytest

from edgecap import BundleError, Captioner
from edgecap import manifest as mf
from edgecap.bundle import load_bundle


@pytest.fixture()
def bundle(export_tiny, tmp_path):
    _, src = export_tiny("vit", "gpt2")
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def edit_manifest(bundle, fn):
    path = bundle / mf.MANIFEST_FILE
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_good_bundle_loads(bundle):
    b = load_bundle(bundle)
    assert b.precisions == ["fp32"]
    v = b.manifest.verification["fp32"]
    assert v.token_agreement == 1.0 and v.max_logit_diff < 1e-3
    assert b.manifest.source.encoder_type == "vit" and b.manifest.source.decoder_type == "gpt2"


def test_changed_bytes(bundle):
    graph = bundle / "fp32" / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError) as exc:
        Captioner(bundle, precision="fp32")
    assert "decoder.onnx" in one_line(exc.value) and "checksum mismatch" in str(exc.value)


def test_changed_tokenizer(bundle):
    (bundle / "tokenizer.json").write_text((bundle / "tokenizer.json").read_text() + " ")
    with pytest.raises(BundleError, match="tokenizer.json: checksum mismatch"):
        load_bundle(bundle)


def test_missing_file(bundle):
    (bundle / "fp32" / "encoder.onnx").unlink()
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle)
    assert "encoder.onnx" in one_line(exc.value) and "missing" in str(exc.value)


def test_missing_manifest(bundle):
    (bundle / mf.MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(bundle)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "fp32/../../x.onnx"])
def test_path_escaping_bundle(bundle, bad):
    def fn(d):
        d["graphs"]["fp32"]["decoder"]["file"] = bad
        d["files"][bad] = "0" * 64

    edit_manifest(bundle, fn)
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle)
    assert bad in one_line(exc.value)


def test_wrong_format_version(bundle):
    edit_manifest(bundle, lambda d: d.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99.*re-export"):
        load_bundle(bundle)


def test_unknown_and_missing_keys_named(bundle):
    def fn(d):
        d["generation"]["temperature"] = 0.7
        del d["generation"]["num_beams"]

    edit_manifest(bundle, fn)
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle)
    msg = one_line(exc.value)
    assert "generation" in msg and "temperature" in msg and "num_beams" in msg


def test_wrong_type(bundle):
    edit_manifest(bundle, lambda d: d["architecture"].update(decoder_layers="two"))
    with pytest.raises(BundleError, match="architecture:decoder_layers: expected an integer"):
        load_bundle(bundle)


def test_not_json(bundle):
    (bundle / mf.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_unknown_precision_lists_available(bundle):
    with pytest.raises(BundleError, match="no 'int4' graphs in this bundle; it has: fp32"):
        Captioner(bundle, precision="int4")


def test_signature_mismatch(bundle):
    """A manifest whose declared graph inputs differ from the graph itself is refused."""

    def fn(d):
        d["graphs"]["fp32"]["decoder"]["inputs"][0]["dtype"] = "float16"
        d["graphs"]["fp32"]["fused"]["encoder"]["outputs"][0]["dtype"] = "float16"

    edit_manifest(bundle, fn)
    with pytest.raises(BundleError, match="input input_ids is int64.* in the graph but float16"):
        Captioner(bundle, precision="fp32", fused=False)
    with pytest.raises(BundleError, match="encoder.fused.onnx: output cross_key.0 is float32.* in the graph but float16"):
        Captioner(bundle, precision="fp32")
