"""`edgecap caption`'s output (issue 12, items 6, 7, 10): JSON records for every input, a progress line
on a terminal only, and a Captioner that says what it is."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
from PIL import Image

from edgecap import Captioner
from edgecap.cli import main


@pytest.fixture()
def images(tmp_path, sample_images):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(8):
        Image.fromarray(sample_images[i % 3]).save(d / f"img{i}.png")
    return d


def test_json_has_a_record_per_input_in_order_with_model_and_precision(export_tiny, images, capsys):
    ckpt, bundle = export_tiny("vit", "gpt2")
    (images / "img3.png").write_bytes(b"")  # a failure between good images, inside one batch
    args = ["caption", str(images / "img2.png"), str(images / "img3.png"), str(images / "nope.png"),
            str(images / "img4.png"), "--bundle", str(bundle), "--json", "--batch-size", "8"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [str(images / n) for n in ("img2.png", "img3.png", "nope.png", "img4.png")]
    assert records[1]["error"] == "file is empty (0 bytes)" and "caption" not in records[1]
    assert records[2]["error"] == "file not found"
    for r in records:
        assert r["model"] == str(ckpt) and r["precision"] == "fp32"
        assert "alternatives" not in r  # only asked for with --num-return-sequences
    assert records[0]["caption"] and records[3]["token_ids"]
    assert err.count("img3.png: file is empty") == 1 and err.count("nope.png: file not found") == 1


def test_json_alternatives_with_num_return_sequences(export_tiny, images, capsys):
    _, bundle = export_tiny("vit", "gpt2")
    paths = [str(images / "img0.png"), str(images / "img1.png")]
    assert main(["caption", *paths, "--bundle", str(bundle), "--json", "--num-beams", "4",
                 "--num-return-sequences", "3"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = Captioner(bundle, backend="cpu").caption(paths, num_beams=4, num_return_sequences=3)
    for r, c in zip(records, expected):
        assert (r["caption"], r["token_ids"]) == (c.text, list(c.token_ids))
        assert [(a["caption"], a["token_ids"], a["score"]) for a in r["alternatives"]] == [
            (a.text, list(a.token_ids), a.score) for a in c.alternatives]
        assert len(r["alternatives"]) == 2
    # plain text: the alternatives follow the best caption on the same line
    assert main(["caption", *paths, "--bundle", str(bundle), "--num-beams", "4", "--num-return-sequences", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t") for line in lines] == [[p, c.text, *(a.text for a in c.alternatives)]
                                                     for p, c in zip(paths, expected)]


def _run_with_terminal_stderr(args):
    """Run `edgecap` with stderr on a real pseudo-terminal; (returncode, stdout, terminal output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgecap", *args], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(timeout=120), out, seen.decode(errors="replace")


def test_progress_line_on_a_terminal_only(export_tiny, images):
    _, bundle = export_tiny("vit", "gpt2")
    args = ["caption", str(images), "--bundle", str(bundle), "--batch-size", "2"]
    rc, out, terminal = _run_with_terminal_stderr(args)
    assert rc == 0 and len(out.splitlines()) == 8
    assert "\r\x1b[K" in terminal and "/8 images [" in terminal  # redrawn in place
    assert "8 images in " in terminal and "Traceback" not in terminal

    # the same run with stderr on a pipe: nothing but what was asked for
    res = subprocess.run([sys.executable, "-m", "edgecap", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout == out and res.stderr == ""

    # a handful of images on a terminal: no progress line either
    rc, out, terminal = _run_with_terminal_stderr(["caption", str(images / "img0.png"), "--bundle", str(bundle)])
    assert rc == 0 and out.startswith(str(images / "img0.png")) and terminal == ""


def test_captioner_repr(export_tiny):
    _, bundle = export_tiny("deit", "trocr")
    cap = Captioner(bundle, precision="fp32", backend="cpu")
    assert repr(cap) == f"Captioner(bundle={str(bundle)!r}, precision='fp32', backend='cpu', families='deit+trocr')"


def test_json_of_a_donut_bundle_has_the_token2json_answer(export_tiny, images, capsys):
    """Donut bundles (Donut preprocessing) add "json": the answer as DonutProcessor.token2json gives it;
    other bundles do not."""
    from edgecap.donut import sequence_to_json

    _, bundle = export_tiny("donut-swin", "mbart")
    assert main(["caption", str(images / "img0.png"), str(images / "img1.png"), "--bundle", str(bundle), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cap = Captioner(bundle)
    for r in records:
        assert "json" in r
        assert r["json"] == json.loads(json.dumps(sequence_to_json(r["token_ids"], cap.detokenize, cap.generation_defaults)))
        assert r["parsed"] == r["json"]  # "parsed", as every bundle with a parser has it; "json" kept
    assert [c.parsed for c in cap.caption([images / "img0.png", images / "img1.png"])] == [r["json"] for r in records]
    _, vit_bundle = export_tiny("vit", "gpt2")
    assert main(["caption", str(images / "img0.png"), "--bundle", str(vit_bundle), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "json" not in plain and "parsed" not in plain


def test_an_image_donut_cannot_fit_fails_alone(export_tiny, images, capsys):
    """A Donut bundle refuses an image too elongated for its canvas: that file is reported (exit 1)
    and the others in its batch are still captioned (it used to fail the whole batch)."""
    _, bundle = export_tiny("donut-swin", "mbart")
    Image.new("RGB", (3000, 1), "white").save(images / "sliver.png")
    args = ["caption", str(images / "img0.png"), str(images / "sliver.png"), str(images / "img1.png"),
            "--bundle", str(bundle), "--json"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [("error" in r) for r in records] == [False, True, False]
    assert "too elongated" in records[1]["error"] and "sliver.png" in err
