"""Nougat preprocessing: pixel parity with transformers' NougatImageProcessor (PIL) on both lines,
the spec's thumbnail fields, and the thin-strip warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pages import nearly_blank_page, skewed_photo, text_page, thin_strip
from test_preprocess import _mode_images, _rand

from edgecap.docimage import crop_margin
from edgecap.errors import ImageError
from edgecap.preprocess import LEGACY_THUMBNAIL, PreprocessSpec, preprocess, preprocess_one


@pytest.fixture(scope="module")
def tf():
    """(processor class, transformers major): 5.x's PIL processor, or 4.x's only one."""
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.models.nougat.image_processing_pil_nougat import NougatImageProcessorPil as cls
    except ImportError:
        from transformers import NougatImageProcessor as cls
    return cls, int(transformers.__version__.split(".")[0])


def _spec_of(processor, major: int) -> PreprocessSpec:
    return PreprocessSpec.from_hf_config(json.loads(processor.to_json_string()), transformers_major=major)


def _hf_run(processor, images, **kwargs) -> np.ndarray:
    return processor(images=list(images), return_tensors="np", **kwargs)["pixel_values"]


def _images() -> dict[str, Image.Image]:
    return {
        "page": text_page(seed=1),
        "page-small": text_page(120, 150, seed=2, margin=9),
        "page-wide": text_page(500, 260, seed=3),
        "nearly-blank": nearly_blank_page(),
        "blank": Image.new("RGB", (90, 120), "white"),
        "skewed-photo-1": skewed_photo(1),
        "skewed-photo-2": skewed_photo(2, 180, 320),
        "thin-strip": thin_strip(900, 12),
        "thin-strip-tall": thin_strip(700, 9, horizontal=False),
        "noise": Image.fromarray(_rand(77, 53, seed=5)),
        "one-pixel-content": Image.fromarray(np.pad(np.zeros((1, 1, 3), np.uint8), ((20, 30), (7, 9), (0, 0)),
                                                    constant_values=255)),
    }


CASES = {
    "nougat-default-small": {"size": {"height": 96, "width": 72}},
    "align": {"size": {"height": 64, "width": 80}, "do_align_long_axis": True},
    "no-crop": {"size": {"height": 96, "width": 72}, "do_crop_margin": False},
    "bicubic-resize": {"size": {"height": 96, "width": 72}, "resample": 3},
    "nearest-resize": {"size": {"height": 96, "width": 72}, "resample": 0},
    "no-thumbnail": {"size": {"height": 96, "width": 72}, "do_thumbnail": False, "do_pad": False},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(_images()))
def test_parity_with_transformers(tf, case, name):
    cls, major = tf
    processor = cls(**CASES[case])
    image = _images()[name]
    spec = _spec_of(processor, major)
    try:
        ref = _hf_run(processor, [image])
    except (ValueError, ZeroDivisionError) as exc:  # too elongated: transformers fails too
        with pytest.raises(ImageError) as info:
            preprocess([image], spec)
        assert "too elongated for Nougat" in info.value.problem, f"transformers failed with {exc!r}"
        return
    mine = preprocess([image], spec)
    assert mine.shape == ref.shape and np.array_equal(mine, ref.astype(np.float32))


@pytest.mark.parametrize("name", ["page", "skewed-photo-2", "nearly-blank"])
def test_parity_at_nougats_own_size(tf, name):
    """The checkpoints' 896x672 canvas, defaults as NougatProcessor.save_pretrained writes them."""
    cls, major = tf
    processor = cls()
    image = _images()[name]
    assert np.array_equal(preprocess([image], _spec_of(processor, major)), _hf_run(processor, [image]))


@pytest.mark.parametrize("mode", sorted(_mode_images()))
def test_mode_parity(tf, mode):
    cls, major = tf
    image = _mode_images()[mode]
    if major < 5 and (image.mode != "RGB" or "transparency" in image.info):
        pytest.skip("transformers 4.x's Nougat processor converts no mode to RGB (greyscale fails, YCbCr is read "
                    "as RGB); edgecap converts every mode as 5.x does")
    processor = cls(size={"height": 100, "width": 40})
    ref = _hf_run(processor, [image], **({} if major < 5 else {"do_convert_rgb": True}))
    assert np.array_equal(preprocess_one(image, _spec_of(processor, major))[None], ref)


def test_batch_of_pages_matches_transformers(tf):
    cls, major = tf
    images = [_images()[n] for n in ("page", "skewed-photo-1", "nearly-blank", "page-wide")]
    processor = cls(size={"height": 96, "width": 72}, do_align_long_axis=True)
    assert np.array_equal(preprocess(images, _spec_of(processor, major)), _hf_run(processor, images))


def test_crop_margin_keeps_the_content_box():
    page = np.full((50, 40, 3), 255, dtype=np.uint8)
    page[10:20, 5:31] = 0  # content
    page[40, 2] = 230  # a faint mark: stretched grey 230 > 200, margin
    cropped = crop_margin(Image.fromarray(page))
    assert cropped.size == (26, 10)
    flat = Image.new("RGB", (30, 20), (128, 128, 128))
    assert crop_margin(flat) is flat  # one grey level: nothing to crop


def test_the_crop_is_what_changes_a_nearly_blank_page(tf):
    """Issue 19: relabelled as Donut, most pixels of a nearly blank page differed (no margin crop)."""
    cls, major = tf
    processor = cls(size={"height": 96, "width": 72})
    as_donut = PreprocessSpec.from_dict({**_spec_of(processor, major).to_dict(), "do_crop_margin": False,
                                         "kind": "donut"})
    ref = _hf_run(processor, [nearly_blank_page()])
    assert np.mean(preprocess([nearly_blank_page()], as_donut) != ref) > 0.3
    assert np.array_equal(preprocess([nearly_blank_page()], _spec_of(processor, major)), ref)


# --- the spec --------------------------------------------------------------------------------------


def _nougat(**overrides) -> PreprocessSpec:
    return PreprocessSpec.from_hf_config({"image_processor_type": "NougatImageProcessor", **overrides})


def test_from_hf_config_defaults_match_transformers(tf):
    cls, major = tf
    spec = _nougat()
    assert spec.kind == "nougat" and spec.output_hw == (896, 672) and spec.do_crop_margin
    assert (spec.thumbnail_resample, spec.thumbnail_reducing_gap) == LEGACY_THUMBNAIL
    assert spec.image_mean == (0.485, 0.456, 0.406) and spec.image_std == (0.229, 0.224, 0.225)
    assert spec == _spec_of(cls(), major)


def test_spec_round_trip_and_refusals():
    spec = _nougat(size={"height": 48, "width": 64}, do_align_long_axis=True)
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["kind"] == "nougat" and d["do_crop_margin"] is True and d["thumbnail_reducing_gap"] == 2.0
    assert PreprocessSpec.from_dict(d) == spec
    with pytest.raises(ValueError, match="do_crop_margin needs kind 'nougat'"):
        PreprocessSpec.from_dict({**d, "kind": "donut"})
    with pytest.raises(ValueError, match="need kind 'donut' or 'nougat'"):
        PreprocessSpec.from_dict({k: v for k, v in {**d, "kind": "vit"}.items() if k not in (
            "do_align_long_axis", "do_thumbnail", "do_pad", "do_crop_margin")})
    with pytest.raises(ValueError, match="thumbnail_reducing_gap must be"):
        PreprocessSpec.from_dict({**d, "thumbnail_reducing_gap": 0.5})


def test_donut_thumbnail_recorded_per_transformers_line():
    """A Donut spec written on 5.x has no thumbnail keys (as before); on 4.x it records 4.x's filter."""
    cfg = {"image_processor_type": "DonutImageProcessor", "size": {"height": 40, "width": 32}}
    modern, legacy = PreprocessSpec.from_hf_config(cfg), PreprocessSpec.from_hf_config(cfg, transformers_major=4)
    assert "thumbnail_resample" not in modern.to_dict() and "do_crop_margin" not in modern.to_dict()
    assert (legacy.to_dict()["thumbnail_resample"], legacy.to_dict()["thumbnail_reducing_gap"]) == LEGACY_THUMBNAIL
    image = _rand(500, 20, seed=4)  # shrinks a lot: the two filters give different pixels
    assert not np.array_equal(preprocess_one(image, modern), preprocess_one(image, legacy))


def test_thin_strip_warns_naming_the_file(tmp_path, caplog):
    path = tmp_path / "strip.png"
    thin_strip(400, 20).save(path)  # content 390x7 -> 72 high -> thumbnail 72x1
    spec = _nougat(size={"height": 96, "width": 72})
    with caplog.at_level(logging.WARNING, logger="edgecap.docimage"):
        preprocess_one(str(path), spec, min_side=4)
    assert any(str(path) in r.getMessage() and "thinner than one 4-pixel patch" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgecap.docimage"):
        preprocess_one(text_page(seed=3), spec, min_side=4)
    assert not caplog.records
