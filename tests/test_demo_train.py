"""End-to-end smoke test of the demo model's training script (models/demo/train.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train():
    return _load("demo_train", DEMO / "train.py")


def test_tokenizer_round_trip(train):
    tok = train.build_tokenizer()
    assert [tok.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>", "<unk>")] == [0, 1, 2, 3]
    text = "a small red circle to the left of a large blue square and a small black star"
    ids = tok.encode(text).ids
    assert tok.token_to_id("<unk>") not in ids
    assert tok.decode([1, *ids, 2, 0, 0], skip_special_tokens=True) == text
    labels, dec_in = train.encode_captions(tok, ["a small red circle", text])
    assert labels[0].tolist()[:5] == [*tok.encode("a small red circle").ids, 2]
    assert labels[0].tolist()[5:] == [-100] * (labels.shape[1] - 5)
    assert dec_in[0, 0].item() == 1 and dec_in[0, 1:5].tolist() == labels[0, :4].tolist()


def test_train_end_to_end(tmp_path, train):
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    torch_threads = torch.get_num_threads()
    out = tmp_path / "ckpt"
    try:
        train.main(["--out", str(out), "--steps", "3", "--scenes", "8", "--threads", "1", "--seed", "5"])
    finally:
        torch.set_num_threads(torch_threads)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name

    model = VisionEncoderDecoderModel.from_pretrained(out).eval()
    assert sum(p.numel() for p in model.parameters()) <= 5_000_000
    for cfg in (model.config, model.generation_config):
        assert cfg.decoder_start_token_id == cfg.bos_token_id == 1
        assert cfg.eos_token_id == 2 and cfg.pad_token_id == 0
    assert model.generation_config.num_beams == 1
    assert model.config.encoder.image_size <= 128
    assert model.config.decoder.add_cross_attention and model.config.decoder.is_decoder

    processor = ViTImageProcessor.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    pp = json.loads((out / "preprocessor_config.json").read_text())
    assert pp["image_mean"] == [0.5] * 3 and pp["image_std"] == [0.5] * 3 and pp["resample"] == 2

    scenes = _load("demo_scenes", DEMO / "scenes.py")
    images = [img for img, _ in scenes.generate(1234, 2, size=model.config.encoder.image_size)]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        ids = model.generate(pixel_values=pixel_values, max_new_tokens=6)
    assert ids.shape[0] == 2 and ids[0, 0].item() == 1
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    # the recipe's output is exactly what `edgecap export` consumes
    from edgecap import Captioner
    from edgecap_export.exporter import ExportOptions, export

    bundle = export(str(out), tmp_path / "bundle", ExportOptions(precisions=("fp32",)))
    caps = Captioner(bundle, precision="fp32").caption(images)
    assert len(caps) == 2 and all(isinstance(c.text, str) for c in caps)
