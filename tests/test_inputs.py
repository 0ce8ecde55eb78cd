"""What `edgecap caption` accepts as input (issue 12, item 9): real files, links, FIFOs and stdin."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from edgecap.cli import main
from edgecap.inputs import expand_inputs


@pytest.fixture()
def tree(tmp_path, sample_images):
    """top/a.png, top/b.jpg, top/notes.txt, top/sub/c.png, top/sub/deeper/d.png"""
    top = tmp_path / "top"
    (top / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(sample_images[0]).save(top / "a.png")
    Image.fromarray(sample_images[1]).save(top / "b.jpg")
    (top / "notes.txt").write_text("not an image, not even by name")
    Image.fromarray(sample_images[2]).save(top / "sub" / "c.png")
    Image.fromarray(sample_images[0]).save(top / "sub" / "deeper" / "d.png")
    return top


def test_directory_is_flat_unless_recursive(tree):
    flat = list(expand_inputs([str(tree)]))
    assert flat == [(str(tree / "a.png"), None), (str(tree / "b.jpg"), None)]
    deep = list(expand_inputs([str(tree)], recursive=True))
    assert [p for p, _ in deep] == [str(tree / n) for n in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png")]
    assert all(problem is None for _, problem in deep)


def test_directory_with_only_subdirectories_suggests_recursive(tree):
    only_dirs = tree / "sub"
    (tree / "sub" / "c.png").unlink()  # sub/ now holds only deeper/
    [(path, problem)] = expand_inputs([str(only_dirs)])
    assert path == str(only_dirs) and "no image files" in problem and "--recursive" in problem
    assert list(expand_inputs([str(only_dirs)], recursive=True)) == [(str(only_dirs / "deeper" / "d.png"), None)]


def test_recursive_scan_survives_a_directory_link_cycle(tree):
    os.symlink("..", tree / "sub" / "up")  # sub/up -> top: walking it naively never ends
    paths = [p for p, _ in expand_inputs([str(tree)], recursive=True)]
    assert paths == [str(tree / n) for n in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png")]


def test_symlink_loop_fifo_broken_link_and_url(tmp_path):
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    os.symlink("missing.jpg", tmp_path / "broken.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    got = dict(expand_inputs([str(tmp_path / n) for n in ("loop.jpg", "broken.jpg", "pipe.png", "gone.png")]
                             + ["https://example.com/cat.jpg"]))
    assert "symbolic link loop" in got[str(tmp_path / "loop.jpg")]
    assert "broken symbolic link" in got[str(tmp_path / "broken.jpg")]
    assert got[str(tmp_path / "pipe.png")] == "not a regular file (a FIFO)"
    assert got[str(tmp_path / "gone.png")] == "file not found"
    assert "URLs are not fetched" in got["https://example.com/cat.jpg"] and "download" in got["https://example.com/cat.jpg"]
    # the same entries found by scanning their directory are reported too, not skipped
    scanned = dict(expand_inputs([str(tmp_path)]))
    assert "symbolic link loop" in scanned[str(tmp_path / "loop.jpg")]
    assert scanned[str(tmp_path / "pipe.png")] == "not a regular file (a FIFO)"


def test_stdin_lists_paths_taken_literally(tree):
    odd = tree / "odd [1] name.png"  # brackets would be a glob class if stdin lines were globs
    (tree / "a.png").rename(odd)
    stdin = io.StringIO(f"{odd}\n\n{tree / 'sub'}\n{tree / '*.jpg'}\n")
    got = list(expand_inputs(["-", str(tree / "b.jpg")], stdin=stdin))
    assert got == [(str(odd), None), (str(tree / "sub" / "c.png"), None),
                   (str(tree / "*.jpg"), "file not found"), (str(tree / "b.jpg"), None)]


def test_cli_reads_stdin_and_reports_fifo_without_blocking(export_tiny, tree, tmp_path):
    _, bundle = export_tiny("vit", "gpt2")
    os.mkfifo(tmp_path / "pipe.png")  # opening it would hang the command: it must be refused first
    res = subprocess.run(
        [sys.executable, "-m", "edgecap", "caption", "-", str(tmp_path / "pipe.png"), "--bundle", str(bundle), "-r"],
        input=f"{tree}\n", capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 1, res.stderr
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == [
        str(tree / n) for n in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png")]
    assert res.stderr.strip() == f"edgecap: {tmp_path / 'pipe.png'}: not a regular file (a FIFO)"


def test_max_pixels_allows_a_large_image(export_tiny, tmp_path, capsys, monkeypatch):
    """A real image just over PIL's decompression-bomb limit: refused by default, captioned with the flag."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after --max-pixels
    _, bundle = export_tiny("vit", "gpt2")
    limit = Image.MAX_IMAGE_PIXELS
    width = 9500
    height = limit // width + 1  # width * height > limit, by less than one row
    big = tmp_path / "big.png"
    Image.new("L", (width, height), 128).save(big, optimize=True)

    assert main(["caption", str(big), "--bundle", str(bundle), "--json"]) == 1
    out, err = capsys.readouterr()
    assert "decompression bomb" in err and "--max-pixels" in err
    assert json.loads(out)["error"].startswith(f"image has {width * height} pixels")

    assert main(["caption", str(big), "--bundle", str(bundle), "--json", "--max-pixels", str(width * height)]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["path"] == str(big) and record["caption"] and "error" not in record


def test_max_pixels_must_be_positive(export_tiny, tmp_path, capsys):
    _, bundle = export_tiny("vit", "gpt2")
    assert main(["caption", str(tmp_path), "--bundle", str(bundle), "--max-pixels", "0"]) == 2
    assert "--max-pixels must be >= 1" in capsys.readouterr().err
