"""A bundle is a closed world (issue 18): graphs read only files inside it, with checksums, and the
manifest's numbers are checked against each other, the graphs and the tokenizer at load — each
problem a BundleError naming the field or file, never ONNX Runtime's error or a wrong caption later."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

from edgecap import BundleError, Captioner
from edgecap import manifest as mf
from edgecap.bundle import load_bundle, sha256_file
from edgecap.onnxfile import external_data_locations


from test_bundle import bundle, edit_manifest  # noqa: F401 (a fixture)


def rehash(bundle):
    """What an attacker who edits the manifest too does: checksums made to fit the tampered files."""
    def fn(d):
        d["files"] = {p.relative_to(bundle).as_posix(): sha256_file(p) for p in sorted(bundle.rglob("*"))
                      if p.is_file() and p.name != mf.MANIFEST_FILE}
    edit_manifest(bundle, fn)


def externalize(bundle, rel="fp32/decoder.onnx", location="w.data"):
    """Rewrite a graph with its weights in fp32/w.data, its entries naming `location` (which, when it
    is not w.data, points somewhere else: an attacker's edit)."""
    path = bundle / rel
    model = onnx.load(str(path))
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.data",
                                                        size_threshold=1024)
    onnx.save_model(model, str(path))  # writes fp32/w.data
    data = path.parent / "w.data"
    if location != "w.data":
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save_model(model, str(path))
    return data


def test_reader_finds_what_onnx_writes(bundle):
    externalize(bundle)
    model = onnx.load(str(bundle / "fp32/decoder.onnx"), load_external_data=False)
    want = [e.value for t in external_data_helper._get_all_tensors(model) for e in t.external_data
            if e.key == "location"]
    assert want and external_data_locations(bundle / "fp32/decoder.onnx") == want
    # export's own layout: every large tensor of a precision's graphs in its weights.bin
    encoder = onnx.load(str(bundle / "fp32/encoder.onnx"), load_external_data=False)
    assert set(external_data_locations(bundle / "fp32/encoder.onnx")) == {"weights.bin"} == {
        e.value for t in external_data_helper._get_all_tensors(encoder) for e in t.external_data if e.key == "location"}


def test_external_data_inside_and_listed_loads_and_captions(bundle):
    externalize(bundle)  # location "w.data" beside the graph
    rehash(bundle)
    b = load_bundle(bundle)
    assert b.external["fp32/decoder.onnx"] == ("fp32/w.data",)
    assert Captioner(bundle, precision="fp32").caption(np.zeros((32, 32, 3), np.uint8))[0].token_ids


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "../../outside.data", "sub/../../../x.data"])
def test_external_data_outside_the_bundle_is_refused(bundle, location):
    externalize(bundle, location=location)
    rehash(bundle)
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle, verify_checksums=False)  # refused whatever the ONNX Runtime version, before it runs
    msg = str(exc.value)
    assert "\n" not in msg and "fp32/decoder.onnx" in msg and location in msg


def test_external_data_through_a_symlink_out_is_refused(bundle, tmp_path):
    data = externalize(bundle)
    rehash(bundle)
    outside = tmp_path / "elsewhere.data"
    shutil.move(data, outside)
    os.symlink(outside, data)
    with pytest.raises(BundleError, match="leaves the bundle directory"):
        load_bundle(bundle, verify_checksums=False)


def test_unlisted_external_data_is_refused(bundle):
    externalize(bundle)
    rehash(bundle)
    edit_manifest(bundle, lambda d: d["files"].pop("fp32/w.data"))
    with pytest.raises(BundleError, match="external data file fp32/w.data .* is not listed with a checksum"):
        load_bundle(bundle, verify_checksums=False)


def test_tampered_external_data_is_refused(bundle):
    data = externalize(bundle)
    rehash(bundle)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="w.data: checksum mismatch"):
        Captioner(bundle, precision="fp32")


# --- the manifest's numbers, at construction --------------------------------------------------------

CASES = {
    "eos beyond the vocabulary": (lambda d: d["generation"].update(eos_token_ids=[10**9]), "generation.eos_token_ids"),
    "no decoder layers": (lambda d: d["architecture"].update(decoder_layers=0), "architecture.decoder_layers"),
    "negative head size": (lambda d: d["architecture"].update(head_dim=-16), "architecture.head_dim"),
    "10^12 heads": (lambda d: d["architecture"].update(decoder_heads=10**12), "architecture.decoder_heads"),
    "heads x size is not the width": (lambda d: d["architecture"].update(decoder_heads=8), "architecture.head_dim"),
    "vocabulary larger than the graphs'": (lambda d: d["architecture"].update(vocab_size=1000),
                                           "output logits: dimension 1 is 96, expected 1000"),
    "NaN rescale factor": (lambda d: d["preprocess"].update(rescale_factor=float("nan")), "rescale_factor must be finite"),
    "prompt id beyond the vocabulary": (lambda d: d["generation"].update(prompt_ids=[5, 96]), "generation.prompt_ids"),
    "max_new_tokens beyond the positions": (lambda d: d["generation"].update(max_new_tokens=10**6),
                                            "generation.max_new_tokens"),
    "an encoder grid that is not the sequence": (lambda d: d["architecture"].update(encoder_grid=[5, 5]),
                                                 "architecture.encoder_grid"),
    "a cache tensor for a layer that is not there": (
        lambda d: d["graphs"]["fp32"]["decoder"]["inputs"].append(
            {"name": "past_key.7", "dtype": "float32", "shape": ["batch", 4, 16, "cache_len"]}), "past_key"),
}


@pytest.mark.parametrize("case", CASES)
def test_inconsistent_manifest_is_refused_at_construction(bundle, case):
    fn, expected = CASES[case]
    edit_manifest(bundle, fn)
    with pytest.raises(BundleError) as exc:
        Captioner(bundle, precision="fp32")
    msg = str(exc.value)
    assert "\n" not in msg and "\x1b" not in msg and expected in msg, msg


def test_tokenizer_larger_than_the_vocabulary_is_refused(bundle):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"t{i}": i for i in range(500)}, unk_token="t3")).save(str(bundle / "tokenizer.json"))
    rehash(bundle)
    with pytest.raises(BundleError, match="tokenizer.json: has 500 tokens but the decoder's vocabulary .* is 96"):
        Captioner(bundle, precision="fp32")


def test_deeply_nested_manifest_is_refused_before_parsing(bundle):
    (bundle / mf.MANIFEST_FILE).write_text('{"format": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(BundleError, match="nested 200001 levels deep"):
        load_bundle(bundle)


def test_huge_tokenizer_is_refused_before_parsing(bundle, monkeypatch):
    from edgecap import bundlecheck

    monkeypatch.setitem(bundlecheck.MAX_JSON_BYTES, "tokenizer", 1000)
    with pytest.raises(BundleError, match="tokenizer.json: .* bytes, more than a tokenizer may have"):
        Captioner(bundle, precision="fp32")
