"""manga-ocr as it ships (issue 19): only vocab.txt and a slow BertJapaneseTokenizer. Export builds a
tokenizer.json that decodes as the slow tokenizer on the whole vocabulary; captions equal HF's
decode of generate()'s tokens; text prompts are refused (the encoding would differ), id prompts work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, VisionEncoderDecoderModel

from edgecap import Captioner, OptionsError
from edgecap import manifest as mf
from edgecap.mangaocr import post_process
from edgecap_export.exporter import ExportOptions, export
from edgecap_export.slowtokenizer import decoding_mismatches, wordpiece_from_vocab

import docmodels


@pytest.fixture(scope="module")
def manga(tmp_path_factory):
    root = tmp_path_factory.mktemp("manga")
    ckpt = docmodels.manga_like(root / "ckpt", image=32, hidden=48, encoder_layers=2, decoder_hidden=64,
                                max_length=24, init_std=0.2, slow_vocab=docmodels.japanese_vocab())
    return ckpt, export(str(ckpt), root / "bundle", ExportOptions(precisions=("fp32",)))


def test_the_checkpoint_is_slow_only(manga):
    ckpt, _ = manga
    slow = AutoTokenizer.from_pretrained(ckpt)
    assert not getattr(slow, "is_fast", False) and not (ckpt / "tokenizer.json").exists()


def test_built_tokenizer_decodes_as_the_slow_one(manga):
    ckpt, bundle = manga
    slow = AutoTokenizer.from_pretrained(ckpt)
    tok, _ = wordpiece_from_vocab(ckpt)
    assert decoding_mismatches(slow, tok, samples=1000, seed=3) == []
    man = mf.Manifest.from_json((bundle / "manifest.json").read_text())
    assert man.tokenizer.encodes_text is False


def test_captions_equal_hf_decode(manga, sample_images):
    ckpt, bundle = manga
    cap = Captioner(bundle, precision="fp32")
    pixels = cap.preprocess(sample_images)
    slow = AutoTokenizer.from_pretrained(ckpt)
    model = VisionEncoderDecoderModel.from_pretrained(ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.from_numpy(pixels))  # the checkpoint's config: beams 4
    decoded = slow.batch_decode(ref, skip_special_tokens=True)
    raw = [c.text for c in cap.caption(sample_images, postprocess="none")]
    assert raw == decoded
    assert len(set(raw)) > 1 and any(t.strip() for t in raw)
    # the bundle's default: manga-ocr's own clean-up of that text (BertJapaneseTokenizer checkpoints)
    assert cap.generation_defaults.postprocess == "manga-ocr"
    assert [c.text for c in cap.caption(sample_images)] == [post_process(t) for t in decoded]


def test_text_prompts_refused_id_prompts_work(manga):
    _, bundle = manga
    cap = Captioner(bundle, precision="fp32")
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(OptionsError, match="rebuilt from the checkpoint's vocab.txt.*prompt_ids"):
        cap.caption(img, prompt="あ")
    assert cap.caption(img, prompt_ids=[10])[0].token_ids is not None
