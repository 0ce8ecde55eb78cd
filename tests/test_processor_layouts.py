"""Every layout transformers writes an image processor in: preprocessor_config.json (4.x, 5.x image
processors), processor_config.json (5.x *Processor.save_pretrained), legacy feature extractors;
looked for before any weights are loaded."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import tiny  # noqa: E402

from edgecap.preprocess import PreprocessSpec  # noqa: E402
from edgecap_export.exporter import ExportError, ExportOptions, export, read_processor_config  # noqa: E402

DONUT = {"image_processor_type": "DonutImageProcessor", "size": {"height": 40, "width": 32}, "do_align_long_axis": True}


@pytest.mark.parametrize("files,where", [
    ({"preprocessor_config.json": DONUT}, "preprocessor_config.json"),
    ({"preprocessor_config.json": {"feature_extractor_type": "DonutFeatureExtractor", "size": [32, 40]}},
     "preprocessor_config.json"),
    ({"processor_config.json": {"image_processor": DONUT, "processor_class": "DonutProcessor"}},
     "processor_config.json (image_processor)"),
    ({"processor_config.json": {"feature_extractor": {"size": [32, 40]}, "processor_class": "DonutProcessor"}},
     "processor_config.json (feature_extractor)"),
    # a 5.x processor file beside a 4.x image processor file: the image processor's own file wins
    ({"preprocessor_config.json": DONUT, "processor_config.json": {"processor_class": "DonutProcessor"}},
     "preprocessor_config.json"),
    ({"preprocessor_config.json": {"processor_class": "DonutProcessor"},
      "processor_config.json": {"image_processor": DONUT}}, "processor_config.json (image_processor)"),
])
def test_layouts(tmp_path, files, where):
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    cfg, found = read_processor_config(str(tmp_path))
    assert found == where
    spec = PreprocessSpec.from_hf_config(cfg)
    assert spec.kind == "donut" and spec.output_hw == (40, 32)


def test_none_found_names_the_files_before_loading_weights(tmp_path, monkeypatch):
    from transformers import VisionEncoderDecoderModel

    ckpt = tiny.build(tmp_path / "ckpt")
    (ckpt / "preprocessor_config.json").unlink()

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the processor config was looked for")

    monkeypatch.setattr(VisionEncoderDecoderModel, "from_pretrained", no_weights)
    with pytest.raises(ExportError) as info:
        export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32",)))
    message = str(info.value)
    assert "preprocessor_config.json and processor_config.json" in message and "\n" not in message
    assert "processor.save_pretrained(DIR)" in message


def test_unsupported_processor_named_with_its_file(tmp_path):
    ckpt = tiny.build(tmp_path / "ckpt")
    (ckpt / "preprocessor_config.json").unlink()
    (ckpt / "processor_config.json").write_text(json.dumps({"image_processor": {"image_processor_type": "BlipImageProcessor"}}))
    with pytest.raises(ExportError, match=r"processor_config.json \(image_processor\): unsupported image_processor_type"):
        export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32",)))


def test_donut_saved_by_its_processor_exports(tmp_path):
    """The issue's case: DonutProcessor.save_pretrained (5.x: processor_config.json) and export."""
    import transformers
    from transformers import DonutProcessor

    try:
        from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil as image_cls
    except ImportError:
        from transformers import DonutImageProcessor as image_cls
    ckpt = tiny.build(tmp_path / "ckpt", "donut-swin", "mbart")
    (ckpt / "preprocessor_config.json").unlink()
    h, w = tiny.SWIN_IMAGE
    processor = image_cls(size={"height": h, "width": w}, do_align_long_axis=True)
    DonutProcessor(image_processor=processor, tokenizer=tiny.tokenizer()).save_pretrained(ckpt)
    major = int(transformers.__version__.split(".")[0])
    assert (ckpt / ("processor_config.json" if major >= 5 else "preprocessor_config.json")).is_file()
    bundle = export(str(ckpt), tmp_path / "bundle", ExportOptions(precisions=("fp32",)))
    written = json.loads((bundle / "manifest.json").read_text())["preprocess"]
    assert PreprocessSpec.from_dict(written) == PreprocessSpec.from_hf_config(
        json.loads(processor.to_json_string()), transformers_major=major)
    assert ("thumbnail_resample" in written) == (major < 5)  # the line's own thumbnail filter, recorded
