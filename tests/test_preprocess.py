"""edgecap.preprocess: parity with the transformers PIL image processors, spec round trips, load errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecap.errors import ImageError
from edgecap.preprocess import PreprocessSpec, load_image, preprocess, preprocess_one, to_rgb

TOL = 1e-6
REPO = Path(__file__).resolve().parents[1]


def _rand(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    """Gradient image: compresses well, so JPEG tests stay small."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    try:  # transformers 5.x: the PIL backends have their own modules
        from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
    except ImportError:  # transformers 4.x: the "slow" processors are the PIL ones
        from transformers import DeiTImageProcessor as DeiTImageProcessorPil
        from transformers import ViTImageProcessor as ViTImageProcessorPil

        LEGACY.append(True)
    return {"vit": ViTImageProcessorPil, "deit": DeiTImageProcessorPil}


LEGACY: list[bool] = []  # non-empty under transformers 4.x


def skip_on_legacy(reason: str) -> None:
    """transformers 4.x processors differ where 5.x is our reference: say where, don't hide it."""
    if LEGACY:
        pytest.skip(f"transformers 4.x: {reason}")


def _hf_run(processor, images) -> np.ndarray:
    return processor(images=list(images), return_tensors="np", do_convert_rgb=True)["pixel_values"]


def _spec_of(processor) -> PreprocessSpec:
    """Spec read from the processor's own saved config, as the exporter would do it."""
    return PreprocessSpec.from_hf_config(json.loads(processor.to_json_string()))


def _assert_close(mine: np.ndarray, ref: np.ndarray) -> None:
    assert mine.shape == ref.shape
    assert mine.dtype == np.float32 and mine.flags["C_CONTIGUOUS"]
    assert np.abs(mine - ref.astype(np.float32)).max() <= TOL


CASES = {
    "vit-default": ("vit", {}),
    "deit-default": ("deit", {}),
    "vit-nonsquare-mean-std": ("vit", {"size": {"height": 48, "width": 80}, "resample": 3,
                                       "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}),
    "vit-lanczos": ("vit", {"size": {"height": 40, "width": 40}, "resample": 1}),
    "vit-nearest": ("vit", {"size": {"height": 33, "width": 17}, "resample": 0}),
    "vit-shortest-edge-crop": ("vit", {"size": {"shortest_edge": 72}, "do_center_crop": True,
                                       "crop_size": {"height": 63, "width": 49}}),
    "deit-crop-pads": ("deit", {"do_resize": False, "crop_size": {"height": 64, "width": 64}}),
    "vit-no-rescale": ("vit", {"size": {"height": 32, "width": 32}, "do_rescale": False,
                               "image_mean": [127.0, 128.0, 129.5], "image_std": [60.0, 61.0, 62.0]}),
    "vit-rescale-only": ("vit", {"size": {"height": 32, "width": 32}, "do_normalize": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("hw", [(37, 91), (500, 333), (1, 1)])
def test_parity_with_transformers(hf, case, hw):
    if "shortest-edge" in case:
        skip_on_legacy("ViTImageProcessor has no shortest_edge resize")
    if min(hw) == 1:
        skip_on_legacy("a 1x1 image is taken for channels-first and rejected")
    family, kwargs = CASES[case]
    if case == "deit-crop-pads" and hw == (500, 333):
        hw = (30, 200)  # crop larger than the image on one axis only
    processor = hf[family](**kwargs)
    image = Image.fromarray(_rand(*hw, seed=hw[0]))
    spec = _spec_of(processor)
    _assert_close(preprocess([image], spec), _hf_run(processor, [image]))


def _mode_images() -> dict[str, Image.Image]:
    rgb = Image.fromarray(_rand(37, 91, seed=1))
    rgba = Image.fromarray(_rand(37, 91, 4, seed=2))
    palette_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_t.info["transparency"] = 3
    return {
        "RGB": rgb, "RGBA": rgba, "L": rgb.convert("L"), "LA": rgba.convert("LA"), "1": rgb.convert("1"),
        "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "P-transparent": palette_t,
        "PA": rgba.convert("PA"),
        "CMYK": rgb.convert("CMYK"), "YCbCr": rgb.convert("YCbCr"),
    }


@pytest.mark.parametrize("mode", sorted(_mode_images()))
def test_mode_conversion_parity(hf, mode):
    skip_on_legacy("ViT/DeiT processors do not convert image modes to RGB (do_convert_rgb is 5.x)")
    image = _mode_images()[mode]
    processor = hf["deit"]()
    _assert_close(preprocess_one(image, _spec_of(processor))[None], _hf_run(processor, [image]))
    assert to_rgb(image).mode == "RGB"


def test_batch_of_mixed_modes_matches_transformers(hf):
    skip_on_legacy("ViT/DeiT processors do not convert image modes to RGB (do_convert_rgb is 5.x)")
    images = list(_mode_images().values())
    processor = hf["vit"](size={"height": 40, "width": 56})
    _assert_close(preprocess(images, _spec_of(processor)), _hf_run(processor, images))


def test_rgba_array_matches_transformers_numpy_path(hf):
    skip_on_legacy("ViT/DeiT processors do not convert image modes to RGB (do_convert_rgb is 5.x)")
    array = _rand(37, 91, 4, seed=5)
    processor = hf["vit"]()
    _assert_close(preprocess([array], _spec_of(processor)), _hf_run(processor, [array]))


def test_sixteen_bit_grey_is_scaled_not_clipped(hf):
    levels = _rand(37, 91, 1, seed=6)
    grey16 = Image.fromarray(levels.astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(to_rgb(grey16))[..., 0], levels)
    as_int = Image.fromarray(levels.astype(np.int32) * 257)
    assert np.array_equal(np.asarray(to_rgb(as_int))[..., 0], levels)
    as_float = Image.fromarray(levels.astype(np.float32) / 255)
    assert np.array_equal(np.asarray(to_rgb(as_float))[..., 0], levels)
    # The scaled image then goes through exactly the 8-bit path transformers takes.
    processor = hf["vit"]()
    _assert_close(preprocess([grey16], _spec_of(processor)),
                  _hf_run(processor, [Image.fromarray(levels)]))


def test_arrays_accepted():
    rgb = _rand(20, 30, seed=7)
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    grey = _rand(20, 30, 1, seed=8)
    assert np.array_equal(np.asarray(load_image(grey)), np.repeat(grey[..., None], 3, axis=-1))
    opaque = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(np.asarray(load_image(opaque)), rgb)
    clear = opaque.copy()
    clear[..., 3] = 0
    assert (np.asarray(load_image(clear)) == 255).all()  # transparent -> white, as transformers


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((2, 4, 4, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_bad_arrays_rejected(bad):
    with pytest.raises(ImageError) as info:
        load_image(bad)
    assert info.value.source == "<array>" and "expected HxWx3 uint8" in info.value.problem


def _spec(**overrides) -> PreprocessSpec:
    cfg = {"image_processor_type": "DeiTImageProcessor"}
    cfg.update(overrides)
    return PreprocessSpec.from_hf_config(cfg)


def test_from_hf_config_defaults_and_round_trip():
    vit = PreprocessSpec.from_hf_config({"image_processor_type": "ViTImageProcessor"})
    assert vit.size == {"height": 224, "width": 224} and vit.resample == 2 and not vit.do_center_crop
    assert vit.image_mean == (0.5, 0.5, 0.5) and vit.rescale_factor == 1 / 255 and vit.output_hw == (224, 224)
    deit = _spec()
    assert deit.resample == 3 and deit.size == {"height": 256, "width": 256} and deit.output_hw == (224, 224)
    for spec in (vit, deit, _spec(size={"shortest_edge": 100}, image_mean=0.4)):
        d = json.loads(json.dumps(spec.to_dict()))
        assert PreprocessSpec.from_dict(d) == spec


def test_from_hf_config_legacy_trocr_style():
    cfg = {"feature_extractor_type": "ViTFeatureExtractor", "processor_class": "TrOCRProcessor",
           "size": 384, "resample": 2, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
           "image_std": [0.5, 0.5, 0.5], "do_center_crop": None}
    spec = PreprocessSpec.from_hf_config(cfg)
    assert spec.size == {"height": 384, "width": 384} and spec.output_hw == (384, 384)


def test_from_hf_config_matches_transformers_defaults(hf):
    for family in ("vit", "deit"):
        processor = hf[family]()
        minimal = {"image_processor_type": json.loads(processor.to_json_string())["image_processor_type"]}
        assert PreprocessSpec.from_hf_config(minimal) == _spec_of(processor)


def test_from_hf_config_rejects_unsupported_type():
    with pytest.raises(ValueError, match="'SiglipImageProcessor'; supported: .*CLIPImageProcessor.*DonutImageProcessor"):
        PreprocessSpec.from_hf_config({"image_processor_type": "SiglipImageProcessor"})
    with pytest.raises(ValueError, match="image_processor_type"):
        PreprocessSpec.from_hf_config({"size": 224})


def test_from_dict_names_unknown_and_missing_keys():
    d = _spec().to_dict()
    del d["resample"], d["image_std"]
    d["do_flip"] = True
    d["colour"] = "blue"
    with pytest.raises(ValueError) as info:
        PreprocessSpec.from_dict(d)
    for key in ("resample", "image_std", "do_flip", "colour"):
        assert key in str(info.value)


def test_spec_validation_and_output_hw():
    with pytest.raises(ValueError, match="depends on the input"):
        _ = _spec(size={"shortest_edge": 100}, do_center_crop=False).output_hw
    assert _spec(size={"shortest_edge": 100}).output_hw == (224, 224)
    with pytest.raises(ValueError, match="size"):
        _spec(size={"longest_edge": 100})
    with pytest.raises(ValueError, match="crop_size"):
        PreprocessSpec(True, {"height": 8, "width": 8}, 2, True, None, True, 1 / 255, True, (0.5,) * 3, (0.5,) * 3)


def test_preprocess_batch_shape_and_errors():
    spec = _spec(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 24})
    batch = preprocess([_rand(50, 60), Image.fromarray(_rand(10, 10))], spec)
    assert batch.shape == (2, 3, 32, 24) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    assert preprocess_one(_rand(50, 60), spec).shape == (3, 32, 24)
    with pytest.raises(TypeError):
        preprocess(Image.fromarray(_rand(4, 4)), spec)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different shapes"):
        preprocess([_rand(5, 6), _rand(7, 8)], _spec(do_resize=False, do_center_crop=False))


def _save(path: Path, array: np.ndarray, fmt: str, **kw) -> Path:
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def test_load_image_from_path_and_exif(tmp_path):
    png = _save(tmp_path / "a.png", _rand(12, 20), "PNG")
    assert np.array_equal(np.asarray(load_image(png)), _rand(12, 20))
    assert load_image(str(png)).size == (20, 12)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rotated = _save(tmp_path / "r.jpg", _smooth(12, 20), "JPEG", exif=exif)
    assert load_image(rotated).size == (12, 20)


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="file not found") as info:
        load_image(path)
    assert info.value.source == str(path)


def test_load_image_zero_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)


def test_load_image_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_load_image_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_load_image_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_rand(64, 64, seed=9)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt") as info:
        load_image(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize("side", [12, 20])  # 144 px: PIL's warning; 400 px: PIL's error (> 2x limit)
def test_load_image_decompression_bomb(tmp_path, monkeypatch, side):
    path = _save(tmp_path / "bomb.png", np.zeros((side, side, 3), np.uint8), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(side * side) in info.value.problem and "100" in info.value.problem


@pytest.mark.parametrize("module", ["edgecap.preprocess", "edgecap.donut"])
def test_runtime_module_imports_no_torch_or_transformers(module):
    code = (f"import sys, {module}; bad = {{'torch', 'transformers'}} & set(sys.modules); "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
