"""The `edgecap` command: captions for good inputs, one clear line per bad one, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgecap", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture()
def inputs(tmp_path, sample_images):
    d = tmp_path / "in"
    d.mkdir()
    for i, arr in enumerate(sample_images):
        Image.fromarray(arr).save(d / f"good{i}.png")
    Image.fromarray(sample_images[0]).save(d / "photo.jpg", quality=90)
    data = (d / "photo.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("this is not an image")
    # decompression bomb: a tiny file declaring an enormous canvas
    Image.new("L", (20000, 20000)).save(d / "bomb.png", optimize=True)
    return d


def test_caption_directory_with_bad_files(export_tiny, inputs):
    _, bundle = export_tiny("vit", "gpt2")
    res = run("caption", inputs, "--bundle", bundle)
    assert res.returncode == 1, res.stderr
    lines = dict(line.split("\t", 1) for line in res.stdout.splitlines())
    for name in ("good0.png", "good1.png", "good2.png", "photo.jpg"):
        assert str(inputs / name) in lines and lines[str(inputs / name)].strip()
    err = res.stderr.splitlines()
    assert "Traceback" not in res.stderr
    for name, problem in (
        ("truncated.jpg", "truncated"),
        ("empty.png", "empty"),
        ("notes.png", "not an image"),
        ("bomb.png", "pixels"),
    ):
        matching = [e for e in err if name in e]
        assert len(matching) == 1 and problem in matching[0], (name, err)


def test_json_lines_and_beams(export_tiny, inputs):
    _, bundle = export_tiny("vit", "gpt2")
    res = run("caption", inputs / "good0.png", inputs / "good1.png", "--bundle", bundle, "--json", "--beams", "3")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(inputs / "good0.png"), str(inputs / "good1.png")]
    assert all(isinstance(r["caption"], str) and r["token_ids"] for r in records)


def test_glob_and_missing_file(export_tiny, inputs):
    _, bundle = export_tiny("vit", "gpt2")
    res = run("caption", str(inputs / "good*.png"), inputs / "nope.png", "--bundle", bundle)
    assert res.returncode == 1
    assert len(res.stdout.splitlines()) == 3
    assert "nope.png: file not found" in res.stderr


def test_bundle_error_exit_2(inputs, tmp_path):
    res = run("caption", inputs / "good0.png", "--bundle", tmp_path / "missing")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "bundle directory not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_option_exit_2(export_tiny, inputs):
    _, bundle = export_tiny("vit", "gpt2")
    res = run("caption", inputs / "good0.png", "--bundle", bundle, "--beams", "0")
    assert res.returncode == 2 and "num_beams" in res.stderr and "Traceback" not in res.stderr


def test_usage_error_exit_2():
    res = run("caption")
    assert res.returncode == 2


def test_debug_shows_traceback(tmp_path, inputs):
    res = run("caption", inputs / "good0.png", "--bundle", tmp_path / "missing", "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_export_unsupported_family(tmp_path):
    """Unknown model families fail at once (from the config alone), naming every unsupported part."""
    import tiny
    from transformers import BeitConfig, VisionEncoderDecoderConfig, XGLMConfig

    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        BeitConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8),
        XGLMConfig(d_model=32, num_layers=1, attention_heads=2, ffn_dim=32, vocab_size=96),
    )
    model_dir = tmp_path / "beit-xglm"
    cfg.save_pretrained(model_dir)
    tiny.tokenizer().save_pretrained(model_dir)
    res = run("export", model_dir, tmp_path / "out")
    assert res.returncode == 2
    line = [ln for ln in res.stderr.splitlines() if "unsupported" in ln]
    assert len(line) == 1 and "unsupported encoder: beit; unsupported decoder: xglm; supported encoders: " in line[0]
    assert "swin" in line[0] and "mbart" in line[0] and "bert" in line[0]
    assert not (tmp_path / "out").exists()


def test_export_then_caption(tmp_path, sample_images):
    import tiny

    ckpt = tiny.build(tmp_path / "ckpt", "deit", "trocr")
    res = run("export", ckpt, tmp_path / "bundle")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    Image.fromarray(sample_images[1]).save(tmp_path / "x.png")
    res = run("caption", tmp_path / "x.png", "--bundle", tmp_path / "bundle")
    assert res.returncode == 0 and res.stdout.startswith(str(tmp_path / "x.png") + "\t")


def test_export_refused_precision_exits_1_unless_allow_partial(tmp_path):
    """A user who asked for int8 and got none must notice: exit 1, the rest of the bundle kept."""
    import tiny

    ckpt = tiny.build(tmp_path / "ckpt")
    res = run("export", ckpt, tmp_path / "b1", "--precision", "fp32,int8", "--min-agreement", "1.01")
    assert res.returncode == 1, res.stderr
    assert "int8 not written" in res.stderr and "--allow-partial" in res.stderr and "Traceback" not in res.stderr
    assert "--eval-images" in res.stderr  # how to get a trustworthy figure
    assert json.loads((tmp_path / "b1" / "manifest.json").read_text())["graphs"].keys() == {"fp32"}
    res = run("export", ckpt, tmp_path / "b2", "--precision", "fp32,int8", "--min-agreement", "1.01", "--allow-partial")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("command", ["caption", "feed"])
def test_max_new_tokens_beyond_the_positions_is_a_usage_error(tmp_path, inputs, command):
    """The demo decoder has 32 positions: --max-new-tokens 40 is exit 2 naming the limit, before any work
    (it was an ONNX Runtime Gather error, exit 3)."""
    extra = ["--out", tmp_path / "out.jsonl"] if command == "feed" else []
    res = run(command, inputs, *extra, "--max-new-tokens", "40", "--min-new-tokens", "35")
    assert res.returncode == 2, res.stderr
    assert "32 positions, so at most 32 new tokens" in res.stderr and "Traceback" not in res.stderr
    assert "Gather" not in res.stderr and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("command", ["caption", "export"])
def test_help_lists_exit_codes(command):
    res = run(command, "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())  # argparse wraps the epilog
    assert "exit codes: 0 ok; 1 some inputs failed" in text and "130 interrupted" in text
