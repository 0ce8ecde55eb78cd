"""`edgecap export` as a new user meets it (issue 12, items 1, 3, 8): readable bundles, errors that say
what to do, no silent overwrite, transformers' warnings not repeated per precision."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import tiny
from edgecap.extras import install_command


def run(*args, umask: int | None = None):
    return subprocess.run([sys.executable, "-m", "edgecap", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("ckpt") / "vit-gpt2")


def _one_error_line(res) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("edgecap: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_bundle_is_readable_by_others_under_umask_022(checkpoint, tmp_path):
    res = run("export", checkpoint, tmp_path / "bundle", "--precision", "fp32", umask=0o022)
    assert res.returncode == 0, res.stderr
    root = tmp_path / "bundle"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755  # as mkdir makes it, not mkdtemp's 0700
    for p in root.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044 and (not p.is_dir() or mode & 0o011 == 0o011), (p, oct(mode))
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no partial directory left beside it


def test_existing_output_needs_force_and_is_replaced_only_by_a_bundle(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    assert run("export", checkpoint, out, "--precision", "fp32").returncode == 0
    (out / "old-marker").write_text("from the first export")

    line = _one_error_line(run("export", checkpoint, out, "--precision", "fp32"))
    assert f"{out}: exists and is not empty" in line and "--force" in line
    assert (out / "old-marker").is_file()

    res = run("export", checkpoint, out, "--precision", "fp32", "--force")
    assert res.returncode == 0, res.stderr
    assert not (out / "old-marker").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the old one is gone, nothing hidden left

    notabundle = tmp_path / "photos"
    notabundle.mkdir()
    (notabundle / "keep.jpg").write_bytes(b"precious")
    line = _one_error_line(run("export", checkpoint, notabundle, "--force"))
    assert "not an edgecap bundle" in line
    assert (notabundle / "keep.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["missing-dir/model", "./missing", "/nonexistent/checkpoint"])
def test_missing_local_directory(tmp_path, name):
    line = _one_error_line(run("export", name, tmp_path / "out"))
    assert "directory not found" in line and "Repo id" not in line and "repo_name" not in line
    if name != "missing-dir/model":  # a hub id in form: transformers is asked, and says why not
        assert line == f"edgecap: error: {name}: directory not found"
    assert not (tmp_path / "out").exists()


def test_directory_without_config(tmp_path):
    (tmp_path / "empty-ckpt").mkdir()
    line = _one_error_line(run("export", tmp_path / "empty-ckpt", tmp_path / "out"))
    assert "no config.json" in line and "save_pretrained" in line


def test_checkpoint_without_tokenizer_json_says_how_to_make_one(tmp_path):
    ckpt = tiny.build(tmp_path / "ckpt")
    (ckpt / "tokenizer.json").unlink()
    line = _one_error_line(run("export", ckpt, tmp_path / "out"))
    assert "tokenizer.json" in line and "fast tokenizer" in line
    assert "AutoTokenizer.from_pretrained(" in line and f".save_pretrained('{ckpt}')" in line
    assert not (tmp_path / "out").exists()


def test_generation_warnings_at_most_once(tmp_path):
    """A checkpoint whose generation config sets max_length makes generate() warn about our
    max_new_tokens: with three precisions, export must not say it three times."""
    from transformers import GenerationConfig

    ckpt = tiny.build(tmp_path / "ckpt")
    gen = GenerationConfig.from_pretrained(ckpt)
    gen.max_length, gen.num_beams, gen.early_stopping, gen.length_penalty = 16, 4, True, 2.0
    gen.save_pretrained(ckpt)
    res = run("export", ckpt, tmp_path / "out", "--precision", "fp32,int8,fp16", "--allow-partial")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["graphs"].keys() >= {"fp32"}
    for text in ("max_length", "generation flags"):
        assert res.stderr.count(text) <= 1, res.stderr


def test_install_hint_works_from_this_checkout():
    """The hint names the checkout this runs from (the README's `pip install '.[export]'`, absolute),
    and pip accepts it as a requirement with that extra."""
    hint = install_command("export")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert hint == f"pip install '{repo}[export]'"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                          "--no-build-isolation", hint.split(" ", 2)[2].strip("'")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Would install edgecap" in res.stdout, res.stdout + res.stderr
