"""Per-token scores and cross-attention maps (issue 13), held to transformers' generate().

token_scores must equal compute_transition_scores(sequences, scores, beam_indices) and
cross_attentions generate(output_attentions=True)'s cross_attentions (the returned beam's, at the
chosen layer and head reduction), for every family; the attention-emitting step is a separate
graph that leaves the normal one byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from transformers import VisionEncoderDecoderModel

from edgecap import Captioner
from edgecap import manifest as mf
from edgecap.attention import caption_strip, colormap, to_grid
from edgecap.cli import main
from edgecap.errors import OptionsError
from edgecap.options import GenerationOptions
from edgecap_export.exporter import ExportOptions, export

import tiny
from test_parity import hf_generate, strip

REPO = Path(__file__).resolve().parent.parent
DEMO_IMAGE = REPO / "models" / "demo" / "samples" / "scene_00000.png"


@pytest.fixture(scope="module")
def export_attn(export_tiny, tmp_path_factory):
    """export_attn(encoder, decoder, precisions) -> (checkpoint, plain bundle, bundle with attentions),
    both bundles exported from the same checkpoint."""
    cache: dict = {}

    def make(encoder: str, decoder: str, precisions: tuple[str, ...] = ("fp32",)):
        key = (encoder, decoder, precisions)
        if key not in cache:
            ckpt, plain = export_tiny(encoder, decoder)
            out = tmp_path_factory.mktemp(f"attn-{encoder}-{decoder}") / "bundle"
            cache[key] = (ckpt, plain, export(str(ckpt), out, ExportOptions(
                precisions=precisions, with_attentions=True, min_agreement=0.0)))
        return cache[key]

    return make


def reference(ckpt, pixels: np.ndarray, **gen):
    """generate() with scores and attentions, and compute_transition_scores of its sequences."""
    out = hf_generate(ckpt, pixels, output_attentions=True, **gen)
    model = VisionEncoderDecoderModel.from_pretrained(ckpt)
    beams = gen.get("num_beams", 1) > 1
    with torch.no_grad():
        trans = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices if beams else None,
                                                normalize_logits=not beams)
    return out, trans.numpy()


def expected_attention(out, row: int, n: int, layer: int, heads: str) -> np.ndarray:
    """generate()'s cross-attention of output row `row` for its first n tokens: the query of the last
    position fed at each step, on the decoder row that step's token came from (beam_indices)."""
    rows = out.beam_indices[row].tolist() if getattr(out, "beam_indices", None) is not None else [row] * n
    att = np.stack([out.cross_attentions[t][layer][rows[t], :, -1, :].numpy() for t in range(n)])
    return att.mean(axis=1) if heads == "mean" else att


def check_against_generate(ckpt, bundle, images, layer=-1, heads="mean", prompt_ids=None, num_return_sequences=1,
                           **gen):
    cap = Captioner(bundle, precision="fp32", backend="cpu")
    pixels = cap.preprocess(images)
    eos = set(cap.generation_defaults.eos_token_ids)
    kwargs = dict(gen, num_return_sequences=num_return_sequences, prompt_ids=prompt_ids)
    ours = cap.caption(images, output_attentions=True, attention_layer=layer, attention_heads=heads, **kwargs)
    plain = cap.caption(images, **kwargs)  # the normal step: same tokens, same scores
    hf_gen, prefix = dict(gen), 1
    if prompt_ids is not None:  # generate() takes a prompt as decoder_input_ids and adds the start token
        prefix = cap.resolve_options(GenerationOptions(prompt_ids=prompt_ids)).prompt_len
        hf_gen["decoder_input_ids"] = torch.tensor([list(prompt_ids)] * len(images))
    out, trans = reference(ckpt, pixels, num_return_sequences=num_return_sequences, **hf_gen)
    rows = out.sequences.tolist()
    for i, (c, p) in enumerate(zip(ours, plain)):
        for j, (h, hp) in enumerate(zip([c, *c.alternatives], [p, *p.alternatives])):
            r = i * num_return_sequences + j
            n = len(h.token_ids)
            assert h.token_ids == hp.token_ids == strip(rows[r], eos, prefix), f"image {i} hypothesis {j}"
            np.testing.assert_allclose(hp.token_scores, trans[r, :n], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(h.token_scores, hp.token_scores, rtol=1e-5, atol=1e-5)
            assert h.confidence == pytest.approx(math.exp(float(np.mean(trans[r, :n]))), rel=1e-4)
            assert h.cross_attentions.dtype == np.float32
            want = expected_attention(out, r, n, layer, heads)
            assert h.cross_attentions.shape == want.shape
            np.testing.assert_allclose(h.cross_attentions, want, rtol=1e-4, atol=1e-4)
            assert hp.cross_attentions is None
    return ours


@pytest.mark.parametrize("encoder,decoder", tiny.PAIRS + tiny.FAMILY_PAIRS)
def test_scores_and_attentions_match_generate(export_attn, sample_images, encoder, decoder):
    """Greedy (last layer, heads averaged) and beam 3 returning 2 (first layer, every head), a batch
    of 3 images of different content."""
    ckpt, _, bundle = export_attn(encoder, decoder)
    arch = Captioner(bundle, precision="fp32").bundle.manifest.architecture
    caps = check_against_generate(ckpt, bundle, sample_images, num_beams=1)
    rows, cols = arch.encoder_grid
    grid = to_grid(caps[0].cross_attentions, arch)  # class/distillation tokens (ViT 1, DeiT 2, Swin 0) dropped
    assert grid.shape == (len(caps[0].token_ids), rows, cols)
    np.testing.assert_allclose(grid.sum(axis=(1, 2)), caps[0].cross_attentions[:, arch.encoder_prefix_tokens:].sum(-1))
    caps = check_against_generate(ckpt, bundle, sample_images, layer=0, heads="all", num_beams=3,
                                  num_return_sequences=2, length_penalty=0.7)
    assert caps[0].cross_attentions.shape[1] == arch.decoder_heads


@pytest.mark.parametrize("encoder,decoder,prompt", [("vit", "gpt2", [17, 42, 9]), ("donut-swin", "mbart", [5, 17, 42])])
def test_attentions_after_a_prompt(export_attn, sample_images, encoder, decoder, prompt):
    """The first generated token's attention is the last prompt position's (generate() feeds the
    whole prompt at once; edgecap one token per step)."""
    ckpt, _, bundle = export_attn(encoder, decoder)
    check_against_generate(ckpt, bundle, sample_images, prompt_ids=prompt, num_beams=1)
    check_against_generate(ckpt, bundle, sample_images, layer=1, prompt_ids=prompt, num_beams=3, length_penalty=2.0)


def test_the_normal_step_is_unchanged_and_the_variant_only_adds_outputs(export_attn):
    ckpt, plain, bundle = export_attn("vit", "gpt2")
    with_attn = Captioner(bundle, precision="fp32").bundle.manifest
    without = Captioner(plain, precision="fp32").bundle.manifest
    assert with_attn.files["fp32/decoder.onnx"] == without.files["fp32/decoder.onnx"]  # sha256: byte for byte
    assert without.graphs["fp32"].decoder_attentions is None
    pair = with_attn.graphs["fp32"]
    assert pair.decoder_attentions.file == "fp32/decoder_attn.onnx"
    layers, heads = with_attn.architecture.decoder_layers, with_attn.architecture.decoder_heads
    normal = onnx.load(str(Path(bundle) / pair.decoder.file))
    variant = onnx.load(str(Path(bundle) / pair.decoder_attentions.file))
    assert [i.name for i in variant.graph.input] == [i.name for i in normal.graph.input]
    extra = [o.name for o in variant.graph.output if o.name not in {n.name for n in normal.graph.output}]
    assert extra == [mf.cross_attention(i) for i in range(layers)]
    assert {t.name: t.shape for t in pair.decoder_attentions.outputs}[mf.cross_attention(0)] == [
        "batch", heads, with_attn.architecture.encoder_seq_len]
    # captioning without attentions never loads the variant
    cap = Captioner(bundle, precision="fp32")
    cap.caption(np.zeros((32, 32, 3), np.uint8))
    assert cap._attention_decoders is None


def test_every_precision_has_its_variant(export_attn, sample_images):
    """Built (int8, fp16) and derived (int4, int8-qdq) precisions: the variant is made as the normal
    step is and its extra outputs leave the step's own kernels alone (int8-qdq's fused softmax), so
    it picks the same tokens with the same scores."""
    precisions = ("fp32", "int8", "fp16", "int4", "int8-qdq")
    _, _, bundle = export_attn("vit", "gpt2", precisions)
    for prec in precisions:
        cap = Captioner(bundle, precision=prec)
        for gen in (dict(num_beams=1), dict(num_beams=3)):
            plain = cap.caption(sample_images, **gen)
            ours = cap.caption(sample_images, output_attentions=True, **gen)
            for c, p in zip(ours, plain):
                assert c.token_ids == p.token_ids, prec
                np.testing.assert_allclose(c.token_scores, p.token_scores, rtol=0, atol=1e-6, err_msg=prec)
                np.testing.assert_allclose(c.cross_attentions.sum(axis=-1), 1.0, atol=2e-3 if prec == "fp16" else 1e-5)


def test_asking_a_bundle_without_attentions(export_attn, sample_images, tmp_path, capsys):
    _, plain, bundle = export_attn("vit", "gpt2")
    cap = Captioner(plain, precision="fp32")
    with pytest.raises(OptionsError, match=r"no attention-emitting decoder step; re-export .*--with-attentions"):
        cap.caption(sample_images, output_attentions=True)
    rc = main(["caption", str(DEMO_IMAGE), "--bundle", str(plain), "--attention-maps", str(tmp_path / "maps")])
    err = capsys.readouterr().err
    assert rc == 2 and "--with-attentions" in err and "Traceback" not in err
    assert not (tmp_path / "maps").exists()
    cap = Captioner(bundle, precision="fp32")
    with pytest.raises(OptionsError, match="attention_heads"):
        cap.caption(sample_images, output_attentions=True, attention_heads="max")
    with pytest.raises(OptionsError, match=r"attention_layer must be an integer in \[-2, 1\]"):
        cap.caption(sample_images, output_attentions=True, attention_layer=2)
    last = cap.caption(sample_images[:1], output_attentions=True, attention_layer=-1)[0].cross_attentions
    np.testing.assert_array_equal(cap.caption(sample_images[:1], output_attentions=True, attention_layer=1)[0]
                                  .cross_attentions, last)


def test_to_grid_drops_prefix_tokens_and_keeps_row_major_order():
    arch = mf.Architecture(2, 8, 2, 2 + 6, 2, 8, 2, 4, 10, 20, 0, 0, encoder_grid=[2, 3], encoder_prefix_tokens=2)
    att = np.zeros((2, 8), np.float32)
    att[0, 0] = 0.5  # a class token: nowhere in the image
    att[0, 2 + 5] = 0.5  # patch 5: row 1, column 2
    att[1, 2 + 1] = 1.0  # patch 1: row 0, column 1
    grid = to_grid(att, arch)
    assert grid.shape == (2, 2, 3)
    assert grid[0].sum() == pytest.approx(0.5) and grid[0, 1, 2] == pytest.approx(0.5) and grid[1, 0, 1] == 1.0
    up = to_grid(att, arch, size=(20, 30))  # 10x10 pixels per cell
    assert up.shape == (2, 20, 30)
    assert np.unravel_index(up[1].argmax(), up[1].shape)[1] // 10 == 1
    assert np.unravel_index(up[0].argmax(), up[0].shape) >= (10, 20)
    with pytest.raises(ValueError, match="2 prefix tokens and a 2x3 grid"):
        to_grid(np.zeros((1, 7)), arch)


def test_colormap_runs_dark_to_bright():
    c = colormap(np.linspace(0, 1, 11)).astype(int)
    assert c.shape == (11, 3) and tuple(c[0]) == (68, 1, 84) and tuple(c[-1]) == (253, 231, 37)
    luminance = c @ np.array([299, 587, 114])
    assert (np.diff(luminance) > 0).all()


@pytest.fixture(scope="module")
def demo_attn(tmp_path_factory):
    """The demo model (models/demo/checkpoint), exported fp32 with attentions."""
    out = tmp_path_factory.mktemp("demo-attn") / "bundle"
    return export(str(REPO / "models" / "demo" / "checkpoint"), out, ExportOptions(precisions=("fp32",),
                                                                                  with_attentions=True))


def test_attention_maps_png_has_one_overlay_per_token(demo_attn, tmp_path, capsys):
    maps = tmp_path / "maps"
    rc = main(["caption", str(DEMO_IMAGE), str(DEMO_IMAGE), "--bundle", str(demo_attn), "--json",
               "--attention-maps", str(maps)])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records[0]["token_scores"]) == len(records[0]["token_ids"])
    assert records[0]["confidence"] == pytest.approx(math.exp(np.mean(records[0]["token_scores"])))
    assert sorted(p.name for p in maps.iterdir()) == ["scene_00000-2.png", "scene_00000.png"]  # same name twice

    cap = Captioner(demo_attn, precision="fp32")
    c = cap.caption(str(DEMO_IMAGE), output_attentions=True)[0]
    assert c.text == records[0]["caption"]
    strip_image, boxes = caption_strip(cap, str(DEMO_IMAGE), c)
    written = np.asarray(Image.open(maps / "scene_00000.png").convert("RGB"))
    np.testing.assert_array_equal(written, np.asarray(strip_image))
    assert len(boxes) == len(c.token_ids)
    plain = np.asarray(Image.open(DEMO_IMAGE).convert("RGB").resize((boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])),
                       dtype=np.float32)
    panels = [written[t:b, l:r].astype(np.float32) for l, t, r, b in boxes]
    for k, panel in enumerate(panels):  # each panel is the image under a heatmap
        assert np.abs(panel - plain).mean() > 5, f"panel {k} has no overlay"
        assert np.corrcoef(panel.mean(axis=-1).ravel(), plain.mean(axis=-1).ravel())[0, 1] > 0.3, f"panel {k}: no image"
    # the tokens looked at different places: the panels are not one picture repeated
    assert len({p.tobytes() for p in panels}) > len(panels) // 2


def test_attention_maps_replace_planted_links_and_take_any_input_name(tmp_path, capsys):
    """Issue 18: a symlink planted in DIR was followed (its target overwritten), and inputs named
    `..png` / `...png` crashed the writer and lost the rest of the run."""
    maps, odd, victim = tmp_path / "maps", tmp_path / "odd", tmp_path / "victim.txt"
    maps.mkdir()
    odd.mkdir()
    victim.write_text("keep me")
    os.symlink(victim, maps / "scene_00000.png")
    names = ["..png", "...png", "a\nb.png", ".hidden.png"]
    for name in names:
        shutil.copy(DEMO_IMAGE, odd / name)
    rc = main(["caption", str(DEMO_IMAGE), *[str(odd / n) for n in names], "--attention-maps", str(maps)])
    assert rc == 0, capsys.readouterr().err
    assert victim.read_text() == "keep me"
    written = sorted(maps.iterdir())
    assert len(written) == 1 + len(names) and all(p.parent == maps and p.is_file() and not p.is_symlink()
                                                  for p in written)
    assert not any(p.name.startswith(".") for p in written)
