"""Florence-2 (issue 21) end to end on a tiny checkpoint with the real one's structure, saved with its
processor: export with default options; tokens equal to generate() (the shipped generation config and
greedy) and `parsed` equal to the processor's post_process_generation for captioning, OCR, detection,
OCR with regions and phrase grounding, through the API, `edgecap caption` and `edgecap feed`;
preprocessing, attention maps, errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_florence2
from edgecap import Captioner
from edgecap import florence2 as f2
from edgecap.attention import caption_strip, to_grid
from edgecap.cli import main
from edgecap.errors import BundleError, OptionsError, UnsupportedModelError
from edgecap.preprocess import PreprocessSpec, preprocess

TASKS = ["<CAPTION>", "<OCR>", "<OD>", "<OCR_WITH_REGION>", "<CAPTION_TO_PHRASE_GROUNDING>a red car"]
LOCATED = ("<OD>", "<OCR_WITH_REGION>", "<CAPTION_TO_PHRASE_GROUNDING>")


@pytest.fixture(scope="module")
def images(sample_images):
    """Three images of different sizes (their answers' boxes are in each one's own pixels)."""
    return [Image.fromarray(a) for a in sample_images]


def _cut(row: list[int], eos: set[int]) -> tuple[int, ...]:
    """A generate() row -> its tokens after the start token, through eos, no padding."""
    row = row[1:]
    for i, t in enumerate(row):
        if t in eos:
            return tuple(row[: i + 1])
    return tuple(row)


def _task(prompt: str) -> str:
    return prompt.split(">")[0] + ">"


@pytest.mark.parametrize("prompt", TASKS)
@pytest.mark.parametrize("mode", ["shipped", "greedy"])
def test_tokens_and_parsed_answers_equal_transformers(florence2, images, prompt, mode):
    ckpt, bundle = florence2
    gen = {} if mode == "shipped" else {"num_beams": 1}
    cap = Captioner(bundle, precision="fp32")
    ours = cap.caption(images, prompt=prompt, **gen)
    out, proc = tiny_florence2.generate(ckpt, images, prompt, **gen)
    eos, start = set(cap.generation_defaults.eos_token_ids), cap.generation_defaults.decoder_start_token_id
    for i, (c, image) in enumerate(zip(ours, images)):
        expected = _cut(out.sequences[i].tolist(), eos)
        assert c.token_ids == expected, f"image {i}"
        assert c.text == proc.tokenizer.decode(list(expected), skip_special_tokens=True)
        text = proc.batch_decode([[start, *expected]], skip_special_tokens=False)[0]
        assert c.parsed == proc.post_process_generation(text, task=_task(prompt), image_size=image.size)
        if mode == "shipped":
            assert c.score == pytest.approx(float(out.sequences_scores[i]), rel=1e-4, abs=1e-4)
        else:
            total = sum(float(torch.log_softmax(out.scores[t][i], -1)[tok]) for t, tok in enumerate(c.token_ids))
            assert c.score == pytest.approx(total, rel=1e-4, abs=1e-4)
    assert len({c.token_ids for c in ours}) > 1, "answers should depend on the image"
    if prompt.startswith(LOCATED):
        (answer,) = ours[0].parsed.values()
        assert any(answer.values()), f"{prompt}: nothing located in image 0: the parse test would be vacuous"


def test_export_with_default_options(florence2):
    _, bundle = florence2
    man = Captioner(bundle).bundle.manifest
    assert sorted(man.graphs) == ["fp32", "int8"]
    assert man.source.encoder_type == "florence2" and man.source.decoder_type == "bart"
    assert man.generation.prompt_target == "encoder" and man.architecture.encoder_prompt
    assert man.architecture.encoder_seq_len == tiny_florence2.IMAGE_TOKENS
    assert man.architecture.encoder_grid == [6, 8] and man.architecture.encoder_prefix_tokens == 1
    assert man.florence2.default_prompt == "<CAPTION>"
    assert man.verification["fp32"].max_logit_diff < 1e-4 and man.verification["fp32"].token_agreement == 1.0
    assert man.verification["int8"].decisive_agreement >= 0.97
    g = man.generation
    assert (g.num_beams, g.no_repeat_ngram_size, g.early_stopping, g.forced_bos_token_id, g.forced_eos_token_ids) == \
        (3, 3, True, 0, [2])


def test_one_bundle_serves_every_task_and_the_default_is_its_prompt(florence2, images):
    _, bundle = florence2
    cap = Captioner(bundle, precision="int8")
    default = cap.caption(images[:1], num_beams=1)[0]
    assert default.token_ids == cap.caption(images[:1], prompt="<CAPTION>", num_beams=1)[0].token_ids
    assert list(default.parsed) == ["<CAPTION>"]
    answers = {p: cap.caption(images[:1], prompt=p, num_beams=1)[0] for p in TASKS}
    assert len({a.token_ids for a in answers.values()}) == len(TASKS), "the prompt reaches the encoder"
    ids = cap.resolve_options(cap_options(prompt="<OD>")).encoder_input_ids
    by_ids = cap.caption(images[:1], prompt_ids=ids, num_beams=1)[0]
    assert by_ids.token_ids == answers["<OD>"].token_ids and by_ids.parsed is None  # ids: no task to parse for


def cap_options(**kwargs):
    from edgecap import GenerationOptions

    return GenerationOptions(**kwargs)


def test_caption_command_json_has_the_parsed_answer(florence2, images, tmp_path, capsys):
    _, bundle = florence2
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    api = Captioner(bundle).caption([str(p) for p in paths], prompt="<OD>")
    assert main(["caption", *map(str, paths), "--bundle", str(bundle), "--json", "--prompt", "<OD>"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["parsed"] for r in records] == [c.parsed for c in api]
    assert [r["token_ids"] for r in records] == [list(c.token_ids) for c in api]
    assert all("json" not in r for r in records)  # Donut's key only


def _frames(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"frame{i:03d}.png")
    return folder


def test_feed_writes_per_frame_detections(florence2, images, tmp_path):
    _, bundle = florence2
    frames = _frames(tmp_path / "frames", images)
    out = tmp_path / "out.jsonl"
    assert main(["feed", str(frames), "--out", str(out), "--bundle", str(bundle), "--prompt", "<OD>",
                 "--dedupe", "0", "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    api = Captioner(bundle).caption(images, prompt="<OD>")
    assert [r["parsed"] for r in records] == [c.parsed for c in api]
    assert [r["caption"] for r in records] == [c.text for c in api]
    from edgecap.feeds import load_records

    assert [r.parsed for r in load_records(out)] == [c.parsed for c in api]  # read back on resume
    assert main(["feed", str(frames), "--out", str(out), "--bundle", str(bundle), "--prompt", "<OD>",
                 "--dedupe", "0", "--quiet"]) == 0  # resumed: nothing to do
    assert len(out.read_text().splitlines()) == len(images)
    feed = list(Captioner(bundle).caption_feed(str(frames), dedupe=0, options=cap_options(prompt="<OCR_WITH_REGION>")))
    assert [f.parsed for f in feed] == [c.parsed for c in Captioner(bundle).caption(images, prompt="<OCR_WITH_REGION>")]


def test_feed_dedupe_repeats_the_last_parsed_answer_and_subtitles_show_its_text(florence2, images, tmp_path):
    pytest.importorskip("av")
    from test_feeds import write_video

    _, bundle = florence2
    still = np.asarray(images[0].resize((64, 48)))
    moving = np.asarray(images[1].resize((64, 48)))
    video = write_video(tmp_path / "cam.mp4", [still] * 8 + [moving] * 4, fps=4)
    out, subs = tmp_path / "out.jsonl", tmp_path / "subs"
    assert main(["feed", str(video), "--out", str(out), "--bundle", str(bundle), "--prompt", "<OD>",
                 "--vtt", str(subs), "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["repeat"] for r in records] == [False, True, False]
    assert records[1]["parsed"] == records[0]["parsed"]
    vtt = (subs / "cam.vtt").read_text()
    for r in records:
        summary = f2.answer_summary(r["parsed"])
        if summary:
            assert summary.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in vtt
        assert "<loc_" not in vtt


def test_preprocessing_equals_the_clip_processor(florence2):
    ckpt, bundle = florence2
    rng = np.random.default_rng(5)
    shipped = tiny_florence2.pil_image_processor(ckpt)
    spec = Captioner(bundle).preprocess_spec
    if tiny_florence2.LEGACY:
        from transformers import CLIPImageProcessor as Pil
    else:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Pil
    default = Pil()  # CLIP's own defaults: shortest edge 224, bicubic, center crop 224, OpenAI mean/std
    default_spec = PreprocessSpec.from_hf_config({"image_processor_type": "CLIPImageProcessor"})
    for hw in [(37, 91), (500, 333), (768, 768), (5, 2000)]:  # not 3 high: 4.57 takes that for channels
        image = Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
        for processor, s in ((shipped, spec), (default, default_spec)):
            ref = processor(images=[image], return_tensors="np")["pixel_values"]
            assert np.abs(preprocess([image], s) - ref).max() <= 1e-6


def test_attention_maps_cover_the_image_tokens(florence2, florence2_attn, images, tmp_path):
    ckpt, _ = florence2
    cap = Captioner(florence2_attn, precision="fp32")
    arch = cap.bundle.manifest.architecture
    ours = cap.caption(images, prompt="<OCR>", num_beams=1, output_attentions=True)
    out, _ = tiny_florence2.generate(ckpt, images, "<OCR>", num_beams=1, output_attentions=True)
    prompt_len = len(cap.resolve_options(cap_options(prompt="<OCR>")).encoder_input_ids)
    for i, c in enumerate(ours):
        n = len(c.token_ids)
        want = np.stack([out.cross_attentions[t][-1][i, :, -1, :].numpy() for t in range(n)]).mean(axis=1)
        assert c.cross_attentions.shape == (n, arch.encoder_seq_len + prompt_len)
        np.testing.assert_allclose(c.cross_attentions, want, rtol=1e-4, atol=1e-4)
        grid = to_grid(c.cross_attentions, arch)  # the mean-pooled token and the prompt's dropped
        rows, cols = arch.encoder_grid
        np.testing.assert_array_equal(grid, c.cross_attentions[:, 1 : 1 + rows * cols].reshape(n, rows, cols))
    strip, boxes = caption_strip(cap, images[0], ours[0])
    assert len(boxes) == len(ours[0].token_ids) and strip.width > 0
    # a new prompt length on the same decoder state: the attention buffers follow it
    longer = cap.caption(images[:1], prompt="<CAPTION_TO_PHRASE_GROUNDING>a long phrase to ground", num_beams=1,
                         output_attentions=True)[0]
    assert longer.cross_attentions.shape[1] > ours[0].cross_attentions.shape[1]
    maps = tmp_path / "maps"
    path = tmp_path / "one.png"
    images[0].save(path)
    assert main(["caption", str(path), "--bundle", str(florence2_attn), "--attention-maps", str(maps),
                 "--prompt", "<OCR>", "--backend", "cpu"]) == 0
    assert (maps / "one.png").is_file()


def test_prompt_errors(florence2, images):
    _, bundle = florence2
    cap = Captioner(bundle)
    with pytest.raises(OptionsError, match="takes no input"):
        cap.caption(images[:1], prompt="<OD> cars")
    with pytest.raises(OptionsError, match="room for"):
        cap.caption(images[:1], prompt="<CAPTION_TO_PHRASE_GROUNDING>" + "a very long caption " * 20)
    with pytest.raises(OptionsError, match="give a prompt"):
        cap.caption(images[:1], prompt_ids=[])
    with pytest.raises(OptionsError, match="cpu backend"):
        Captioner(bundle, backend="cuda")


def test_bundle_sections_must_agree(florence2, tmp_path):
    _, bundle = florence2
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    man = json.loads((copy / "manifest.json").read_text())
    del man["florence2"]
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="prompt_target"):
        Captioner(copy)


def test_the_remote_code_layout_is_refused_with_a_pointer(tmp_path):
    from edgecap_export.exporter import export

    ckpt = tmp_path / "old"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "florence2", "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config"},
        "vision_config": {"model_type": "davit"}, "text_config": {"model_type": "florence2_language"}}))
    with pytest.raises(UnsupportedModelError, match="trust_remote_code layout.*florence-community"):
        export(str(ckpt), tmp_path / "bundle")


def test_confidence_and_token_scores(florence2, images):
    _, bundle = florence2
    c = Captioner(bundle, precision="fp32").caption(images[:1], prompt="<OD>")[0]
    assert len(c.token_scores) == len(c.token_ids)
    assert c.confidence == pytest.approx(math.exp(sum(c.token_scores) / len(c.token_scores)))


def test_new_manifest_fields_are_written_only_when_used(florence2, export_tiny):
    """Bundles that do not read a prompt in the encoder are written as before these fields existed
    (so a runtime that predates them still reads them); a Florence-2 manifest round-trips."""
    from edgecap import manifest as mf

    _, plain = export_tiny("vit", "gpt2")
    text = (plain / "manifest.json").read_text()
    assert all(key not in text for key in ('"florence2"', '"prompt_target"', '"encoder_prompt"'))
    _, bundle = florence2
    man = mf.Manifest.from_json((bundle / "manifest.json").read_text())
    assert mf.Manifest.from_json(man.to_json()) == man
    assert man.florence2.tasks[0] == mf.TaskPrompt("<OCR>", "What is the text in the image?", False)
