"""Donut preprocessing: parity with transformers' DonutImageProcessor (PIL), spec compatibility, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_preprocess import _assert_close, _mode_images, _rand, _save, _smooth

from edgecap.errors import ImageError
from edgecap.manifest import Manifest
from edgecap.preprocess import PreprocessSpec, preprocess, preprocess_one

REPO = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = REPO / "edgecap" / "data" / "demo-bundle" / "manifest.json"


@pytest.fixture(scope="module")
def tf():
    """(processor class, legacy): the PIL processor of transformers 5.x, or 4.x's slow one."""
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil as cls
    except ImportError:
        from transformers import DonutImageProcessor as cls
    return cls, int(transformers.__version__.split(".")[0]) < 5


def _spec_of(processor, legacy: bool = False) -> PreprocessSpec:
    """The spec the exporter writes on this transformers line (4.x records its thumbnail filter)."""
    return PreprocessSpec.from_hf_config(json.loads(processor.to_json_string()), transformers_major=4 if legacy else None)


def _hf_run(processor, images, **kwargs) -> np.ndarray:
    return processor(images=list(images), return_tensors="np", **kwargs)["pixel_values"]


CASES = {
    "portrait-default": {"size": {"height": 40, "width": 32}},
    "landscape-align": {"size": {"height": 48, "width": 64}, "do_align_long_axis": True},
    "legacy-size-list-align": {"size": [32, 40], "do_align_long_axis": True},  # (width, height)
    "no-thumbnail": {"size": {"height": 40, "width": 32}, "do_thumbnail": False, "do_align_long_axis": True},
    "no-pad": {"size": {"height": 40, "width": 32}, "do_pad": False},
    "no-resize": {"size": {"height": 40, "width": 32}, "do_resize": False},
    "nearest": {"size": {"height": 40, "width": 32}, "resample": 0},
    "bicubic-align": {"size": {"height": 40, "width": 32}, "resample": 3, "do_align_long_axis": True},
    "mean-std-no-rescale": {"size": {"height": 48, "width": 64}, "do_rescale": False,
                            "image_mean": [127.0, 128.0, 129.5], "image_std": [60.0, 61.0, 62.0]},
    "center-crop": {"size": {"height": 40, "width": 32}, "do_center_crop": True,
                    "crop_size": {"height": 30, "width": 36}},
}
SHAPES = [(1, 1), (7, 300), (301, 5), (33, 47), (47, 33), (500, 20), (80, 64), (36, 33), (40, 32)]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("hw", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_parity_with_transformers(tf, case, hw):
    cls, legacy = tf
    kwargs = CASES[case]
    if legacy and min(hw) == 1:
        pytest.skip("transformers 4.x: a 1x1 image is taken for channels-first")
    if legacy and case == "center-crop":
        pytest.skip("transformers 4.x: DonutImageProcessor ignores do_center_crop")
    processor = cls(**kwargs)
    image = Image.fromarray(_rand(*hw, seed=hw[0] * 1000 + hw[1]))
    spec = _spec_of(processor, legacy)
    try:
        ref = _hf_run(processor, [image])
    except (ValueError, ZeroDivisionError) as exc:  # too elongated, or larger than size without thumbnail
        with pytest.raises(ImageError) as info:
            preprocess([image], spec)
        assert "Donut" in info.value.problem, f"transformers failed with {exc!r}"
        return
    _assert_close(preprocess([image], spec), ref)


def test_cases_cover_each_step(tf):
    """The shapes above make every step do real work: rotate, shrink, pad on both axes."""
    cls, _ = tf
    spec = _spec_of(cls(size={"height": 40, "width": 32}, do_align_long_axis=True))
    def image_columns(pixels: np.ndarray) -> list[int]:
        return [x for x in range(pixels.shape[2]) if not (pixels[:, :, x] == -1).all()]

    padded = preprocess_one(_rand(500, 20), spec)  # 20 wide -> 32x800 -> shrunk to 1x40, padded to 32 wide
    assert padded.shape == (3, 40, 32) and image_columns(padded) == [15]
    landscape = preprocess_one(_rand(33, 47), spec)  # turned upright: 33 wide -> 32x45 -> 28x40, centered
    assert image_columns(landscape) == list(range(2, 30))


def test_align_long_axis_turns_clockwise(tf):
    cls, _ = tf
    image = _smooth(20, 40)  # landscape, left-to-right red ramp
    spec = _spec_of(cls(size={"height": 40, "width": 20}, do_align_long_axis=True, do_normalize=False,
                        do_rescale=False))
    out = preprocess_one(image, spec).transpose(1, 2, 0).astype(np.uint8)
    assert np.array_equal(out, np.rot90(image, -1))  # the image's left edge is now its top


@pytest.mark.parametrize("mode", sorted(_mode_images()))
def test_mode_parity(tf, mode):
    cls, legacy = tf
    image = _mode_images()[mode]
    if legacy and ("A" in image.getbands() or "transparency" in image.info):
        pytest.skip("transformers 4.x drops transparency instead of compositing over white")
    # 37x91 turned upright becomes 98x40 after resize: fits 100x40, so no thumbnail shrink on 4.x either
    processor = cls(size={"height": 100, "width": 40}, do_align_long_axis=True)
    # 5.x's Donut processor converts modes only when asked (else L fails on 3 means); 4.x always did
    ref = _hf_run(processor, [image], **({} if legacy else {"do_convert_rgb": True}))
    _assert_close(preprocess_one(image, _spec_of(processor, legacy))[None], ref)


def test_batch_of_mixed_shapes_matches_transformers(tf):
    cls, legacy = tf
    images = [Image.fromarray(_rand(h, w, seed=h)) for h, w in [(30, 24), (45, 40), (72, 64), (40, 32)]]
    processor = cls(size={"height": 40, "width": 32})
    batch = preprocess(images, _spec_of(processor, legacy))
    assert batch.shape == (4, 3, 40, 32)
    _assert_close(batch, _hf_run(processor, images))


@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("hw", [(40, 64), (64, 40)])
def test_paths_with_exif_match_transformers_load_image(tf, tmp_path, orientation, hw):
    from transformers.image_utils import load_image as hf_load_image

    cls, legacy = tf
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "page.jpg", _smooth(*hw), "JPEG", exif=exif)
    processor = cls(size={"height": 48, "width": 30}, do_align_long_axis=True, resample=3)
    hf_image = hf_load_image(str(path))
    _assert_close(preprocess([path], _spec_of(processor, legacy)), _hf_run(processor, [hf_image]))


def test_elongated_image_error_names_the_file(tmp_path):
    spec = PreprocessSpec.from_hf_config({"image_processor_type": "DonutImageProcessor",
                                          "size": {"height": 40, "width": 32}})
    path = _save(tmp_path / "strip.png", _rand(5, 301), "PNG")
    with pytest.raises(ImageError) as info:
        preprocess_one(path, spec)
    assert info.value.source == str(path) and "too elongated" in info.value.problem
    assert "\n" not in str(info.value)
    no_thumb = PreprocessSpec.from_hf_config({"image_processor_type": "DonutImageProcessor", "do_thumbnail": False,
                                              "size": {"height": 40, "width": 32}})
    with pytest.raises(ImageError, match="larger than Donut's 32x40 input"):
        preprocess_one(_rand(33, 47), no_thumb)


# --- the spec --------------------------------------------------------------------------------------


def _donut(**overrides) -> PreprocessSpec:
    return PreprocessSpec.from_hf_config({"image_processor_type": "DonutImageProcessor", **overrides})


def test_from_hf_config_donut_defaults_match_transformers(tf):
    cls, legacy = tf
    spec = _donut()
    assert spec.kind == "donut" and spec.size == {"height": 2560, "width": 1920} and spec.output_hw == (2560, 1920)
    assert spec.do_thumbnail and spec.do_pad and not spec.do_align_long_axis and spec.resample == 2
    assert spec == _spec_of(cls()) and _spec_of(cls(), legacy).thumbnail_resample == (3 if legacy else None)


@pytest.mark.parametrize("type_key,name", [("image_processor_type", "DonutImageProcessorFast"),
                                           ("feature_extractor_type", "DonutFeatureExtractor")])
def test_from_hf_config_donut_names_and_legacy_size(type_key, name):
    # donut-base's own config: size as [width, height], resample 2, align off
    cfg = {type_key: name, "processor_class": "DonutProcessor", "size": [1920, 2560], "do_align_long_axis": False,
           "do_thumbnail": True, "do_pad": True, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    spec = PreprocessSpec.from_hf_config(cfg)
    assert spec.kind == "donut" and spec.output_hw == (2560, 1920)


def test_donut_output_hw():
    assert _donut(size={"height": 40, "width": 32}).output_hw == (40, 32)
    assert _donut(size=[32, 40], do_center_crop=True, crop_size={"height": 8, "width": 6}).output_hw == (8, 6)
    with pytest.raises(ValueError, match="without do_pad"):
        _ = _donut(do_pad=False).output_hw


def test_donut_spec_round_trip():
    spec = _donut(size={"height": 48, "width": 64}, do_align_long_axis=True, resample=3)
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["kind"] == "donut" and d["do_align_long_axis"] is True and d["do_pad"] is True
    assert PreprocessSpec.from_dict(d) == spec


def test_bundle_written_before_donut_loads_unchanged():
    """(c): a pre-Donut manifest's preprocess dict reads back, writes back byte-identical, same pixels."""
    old = json.loads(DEMO_MANIFEST.read_text())["preprocess"]
    assert "kind" not in old and "do_pad" not in old
    spec = PreprocessSpec.from_dict(old)
    assert spec.kind == "vit" and spec.to_dict() == old
    vit = PreprocessSpec.from_hf_config({"image_processor_type": "ViTImageProcessor", "size": old["size"]})
    assert spec == vit
    image = _rand(37, 91, seed=3)
    assert np.array_equal(preprocess([image], spec), preprocess([image], vit))


@pytest.mark.parametrize("patch,message", [
    ({"random_padding": False}, "unknown keys: random_padding"),
    ({"kind": "swin"}, "kind must be one of"),
    ({"kind": "vit"}, "do_align_long_axis, do_thumbnail, do_pad need kind 'donut'"),
    ({"do_pad": "yes"}, "do_pad must be true or false"),
    ({"size": {"shortest_edge": 40}}, "needs size with height and width"),
])
def test_bad_donut_dicts_refused(patch, message):
    d = {**_donut(do_align_long_axis=True).to_dict(), **patch}
    with pytest.raises(ValueError, match=message):
        PreprocessSpec.from_dict(d)


def test_is_donut():
    from edgecap.donut import is_donut

    text = DEMO_MANIFEST.read_text()
    assert not is_donut(Manifest.from_json(text))
    raw = json.loads(text)
    raw["preprocess"] = _donut().to_dict()
    manifest = Manifest.from_json(json.dumps(raw))
    assert is_donut(manifest) and is_donut(_donut())
    assert not is_donut(PreprocessSpec.from_dict(json.loads(text)["preprocess"]))
