"""`edgecap feed` / `Captioner.caption_feed`: sampling, dedupe, sources, errors, resume, subtitles.

Videos are made here with PyAV (tiny frames, a few fps). Most tests use a tiny random model; the
canonical-caption test uses the demo checkpoint when it has been trained.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecap import Captioner
from edgecap.cli import main
from edgecap.feeds import FeedError, FeedProblem, expand_sources, load_records
from edgecap.feeds.command import Progress
from edgecap.subtitles import Cue, merge_cues, to_srt, to_vtt

try:
    import av
except ImportError:  # the [feeds] extra: only the video tests need it
    av = None
needs_av = pytest.mark.skipif(av is None, reason="PyAV not installed (pip install 'edgecap[feeds]')")

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "demo"
SIDE = 96


# --- helpers -------------------------------------------------------------------------------------


def pattern(k: int, side: int = SIDE) -> np.ndarray:
    """A distinct blocky colour image per k."""
    base = np.random.default_rng(1000 + k).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.kron(base, np.ones((side // 8, side // 8, 1), np.uint8))


def write_video(path: Path, frames, fps: int = 4, codec: str = "mpeg4", options: dict | None = None) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if options:
            s.options = options
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def scene_video(path: Path, scenes, seconds: int, fps: int = 2, **kw) -> Path:
    """Each scene (image) held for `seconds`, with a little per-frame sensor noise."""
    rng = np.random.default_rng(5)
    frames = []
    for img in scenes:
        for _ in range(seconds * fps):
            noise = rng.integers(-2, 3, img.shape)
            frames.append(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return write_video(path, frames, fps=fps, **kw)


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="session")
def tiny_bundle(export_tiny):
    return export_tiny("vit", "gpt2")[1]


@pytest.fixture(scope="session")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle, threads=1)


@pytest.fixture(scope="session")
def scenes_video(tmp_path_factory):
    """Scenes A (4 s), B (3 s), A (3 s) at 2 fps, h264 if available."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path = tmp_path_factory.mktemp("scenes") / "cam.mp4"
    a, b = pattern(1), pattern(2)
    frames = [a] * 8 + [b] * 6 + [a] * 6
    return write_video(path, frames, fps=2, codec=codec)


# --- sampling ------------------------------------------------------------------------------------


@needs_av
@pytest.mark.parametrize("codec,ext", [("mpeg4", "mp4"), ("mjpeg", "avi"), ("mpeg4", "mkv")])
def test_sampling_every(tmp_path, captioner, codec, ext):
    video = write_video(tmp_path / f"v.{ext}", [pattern(i // 8) for i in range(40)], fps=4, codec=codec)  # 10 s
    got = list(captioner.caption_feed(video, every=1.0, dedupe=0))
    assert [r.frame for r in got] == list(range(0, 40, 4))
    assert [r.pts for r in got] == pytest.approx([float(i) for i in range(10)])
    assert {r.source for r in got} == {str(video)} and not any(r.repeat for r in got)

    half = list(captioner.caption_feed(video, every=0.5, dedupe=0, batch_size=3))
    assert [r.frame for r in half] == list(range(0, 40, 2))
    assert [r.pts for r in half] == pytest.approx([i / 2 for i in range(20)])
    # same frames, same captions whatever the batch size
    assert {r.frame: r.caption for r in half if r.frame % 4 == 0} == {r.frame: r.caption for r in got}

    assert [(r.frame, r.pts) for r in captioner.caption_feed(video, every=3, dedupe=0)] == [
        (0, 0.0), (12, 3.0), (24, 6.0), (36, 9.0)]
    assert [r.frame for r in captioner.caption_feed(video, every=1, dedupe=0, max_frames=3)] == [0, 4, 8]


@needs_av
def test_every_not_a_multiple_of_the_frame_interval(tmp_path, captioner):
    video = write_video(tmp_path / "v.mp4", [pattern(0)] * 12, fps=4)  # frames at 0, .25, .5 ...
    got = list(captioner.caption_feed(video, every=0.4, dedupe=0))
    # grid 0, .4, .8, 1.2 ... -> first frame at or after each: 0, .5, 1.0 (covers .8), 1.25, 1.75 (covers 1.6), 2.0, 2.5 ...
    assert [r.pts for r in got] == pytest.approx([0.0, 0.5, 1.0, 1.25, 1.75, 2.0, 2.5])


# --- dedupe --------------------------------------------------------------------------------------


@needs_av
def test_dedupe_marks_repeats_on_static_stretches(captioner, scenes_video):
    got = list(captioner.caption_feed(scenes_video, every=1.0))
    assert [r.pts for r in got] == pytest.approx([float(i) for i in range(10)])
    assert [r.repeat for r in got] == [False, True, True, True, False, True, True, False, True, True]
    for r in got:
        if not r.repeat:
            ref = r
        assert (r.caption, r.score) == (ref.caption, ref.score)
    plain = list(captioner.caption_feed(scenes_video, every=1.0, dedupe=0))
    assert not any(r.repeat for r in plain)
    assert [r.caption for r in plain] == [r.caption for r in got]  # static stretch: same caption anyway


# --- sources -------------------------------------------------------------------------------------


def test_frame_folder_source(tmp_path, captioner):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(pattern(i)).save(folder / f"f{i:03d}.png")
    (folder / "f002.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("ignored")
    problems: list[FeedProblem] = []
    got = list(captioner.caption_feed(folder, every=1.0, fps=2, dedupe=0, on_error=problems.append))
    assert [(r.frame, r.pts) for r in got] == [(0, 0.0), (4, 2.0), (6, 3.0)]
    assert {r.source for r in got} == {str(folder)}
    assert len(problems) == 1 and problems[0].source == str(folder) and "frame 2 (pts 1.000 s)" in str(problems[0])
    expected = captioner.caption([pattern(0), pattern(4), pattern(6)])
    assert [r.caption for r in got] == [c.text for c in expected]
    with pytest.raises(FeedError, match="f002|frame 2"):
        list(captioner.caption_feed(folder, every=1.0, fps=2))


def test_api_yields_lazily_and_raises_for_bad_sources_at_the_end(tmp_path, captioner):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(pattern(i)).save(folder / f"{i}.png")
    feed = captioner.caption_feed([str(tmp_path / "missing.mp4"), str(folder)], dedupe=0)
    first = next(feed)
    assert (first.source, first.frame, first.pts, first.repeat) == (str(folder), 0, 0.0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.caption = "x"
    got = [first]
    with pytest.raises(FeedError, match="missing.mp4: file not found"):
        for r in feed:
            got.append(r)
    assert [r.frame for r in got] == [0, 1, 2]


def test_expand_sources(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.avi").write_bytes(b"x")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "0.png").write_bytes(b"x")
    got = expand_sources([str(tmp_path / "*.mp4"), str(tmp_path / "img"), str(tmp_path / "missing.mkv"),
                          str(tmp_path / "a.mp4"), str(tmp_path / "nothing*.mov")])
    assert [(s.name, s.kind, s.problem) for s in got] == [
        (str(tmp_path / "a.mp4"), "video", None),
        (str(tmp_path / "img"), "frames", None),
        (str(tmp_path / "missing.mkv"), "video", "file not found"),
        (str(tmp_path / "nothing*.mov"), "video", "no files match this pattern"),
    ]


@needs_av
def test_bad_sources_are_reported_and_the_rest_completes(tmp_path, tiny_bundle, capfd):
    good = write_video(tmp_path / "good.mp4", [pattern(i // 4) for i in range(16)], fps=4)
    good_avi = write_video(tmp_path / "good.avi", [pattern(i // 4) for i in range(16)], fps=4, codec="mjpeg")
    data = good.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: unopenable
    mkv = write_video(tmp_path / "full.mkv", [pattern(i // 4) for i in range(40)], fps=4).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])  # ends early, silently
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    avi = bytearray(write_video(tmp_path / "c.avi", [pattern(i // 8) for i in range(40)], fps=4, codec="mjpeg").read_bytes())
    mid = len(avi) // 2
    avi[mid : mid + 300] = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.avi").write_bytes(bytes(avi))
    out = tmp_path / "out.jsonl"
    names = ["good.mp4", "cut.mp4", "notes.mp4", "cut.mkv", "corrupt.avi", "good.avi"]
    capfd.readouterr()
    rc = main(["feed", *[str(tmp_path / n) for n in names], "--out", str(out), "--bundle", str(tiny_bundle),
               "--dedupe", "0", "--threads", "1", "--batch-size", "4"])
    err = capfd.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    assert all(line.startswith("edgecap: ") for line in err.splitlines()), err
    recs = read_jsonl(out)
    by = {}
    for r in recs:
        by.setdefault(Path(r["source"]).name, []).append(r)
    assert [r["frame"] for r in by["good.mp4"]] == [0, 4, 8, 12]
    assert [r["frame"] for r in by["good.avi"]] == [0, 4, 8, 12]
    assert "cut.mp4" not in by and "notes.mp4" not in by
    problems = [line for line in err.splitlines() if not line.startswith("edgecap: feed:") and "failed:" not in line]
    cut = [line for line in problems if "cut.mp4" in line]
    assert len(cut) == 1 and "cannot open as video" in cut[0]
    assert [line for line in problems if "notes.mp4" in line]
    cut_mkv = [line for line in problems if "cut.mkv" in line]
    assert len(cut_mkv) == 1 and "ends early" in cut_mkv[0] and "frame " in cut_mkv[0]
    assert 0 < len(by["cut.mkv"]) < 10
    bad = [line for line in problems if "corrupt.avi" in line]
    assert bad and all(re.search(r"frame \d+ \(pts [\d.]+ s\)", line) for line in bad), bad
    # the run continued after the corrupt frame: later samples are there
    bad_pts = float(re.search(r"pts ([\d.]+) s", bad[0]).group(1))
    assert max(r["pts"] for r in by["corrupt.avi"]) > bad_pts + 1
    summary = [line for line in err.splitlines() if "failed:" in line]
    assert {n for n in names if any(n in line for line in summary)} == {"cut.mp4", "notes.mp4", "cut.mkv", "corrupt.avi"}
    rec = recs[0]
    assert set(rec) == {"source", "frame", "pts", "caption", "score", "repeat", "confidence", "model", "precision"}
    assert rec["precision"] == "fp32" and isinstance(rec["model"], str)


@needs_av
def test_usage_errors_exit_2(tmp_path, tiny_bundle, scenes_video, capfd):
    out = str(tmp_path / "o.jsonl")
    for bad in (["--every", "0"], ["--batch-size", "0"], ["--dedupe", "-1"], ["--bundle", str(tmp_path)]):
        args = ["feed", str(scenes_video), "--out", out] + (["--bundle", str(tiny_bundle)] if "--bundle" not in bad else []) + bad
        assert main(args) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "--every" in err
    # `--ray clip.mp4 ...`: the optional address swallowed a source
    assert main(["feed", "--ray", str(scenes_video), str(scenes_video), "--out", str(tmp_path / "d")]) == 2
    assert "not a Ray address" in capfd.readouterr().err


# --- output, kill and resume ---------------------------------------------------------------------

THROTTLED = """
import sys, time
class _Block:  # the feed runtime must not need the export stack
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "onnx"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, _Block())
import edgecap.captioner as c
orig = c.Captioner.encode
def slow(self, pixels, *args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return orig(self, pixels, *args, **kwargs)
c.Captioner.encode = slow
from edgecap.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_throttled(delay: float, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", THROTTLED, str(delay), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(proc: subprocess.Popen, out: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("feed produced no output in time")


@pytest.fixture(scope="session")
def two_feeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("feeds")
    one = write_video(d / "one.mp4", [pattern(i // 10) for i in range(60)], fps=4)  # 15 s, scenes every 2.5 s
    two = write_video(d / "two.avi", [pattern(20 + i // 6) for i in range(36)], fps=4, codec="mjpeg")  # 9 s
    return [str(one), str(two)]


@needs_av
def test_kill_and_resume(tmp_path, tiny_bundle, two_feeds):
    common = ["--bundle", str(tiny_bundle), "--every", "0.5", "--batch-size", "2", "--threads", "1", "--quiet"]
    reference = tmp_path / "reference.jsonl"
    assert main(["feed", *two_feeds, "--out", str(reference), *common]) == 0
    ref = read_jsonl(reference)
    assert len(ref) == 30 + 18 and any(r["repeat"] for r in ref)

    out = tmp_path / "out.jsonl"
    proc = _start_throttled(0.1, ["feed", *two_feeds, "--out", str(out), *common])
    try:
        _wait_for_lines(proc, out, 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = read_jsonl(out)  # every line complete and valid
    assert 3 <= len(first) < len(ref)
    with open(out, "ab") as fh:  # a write torn by a crash: no newline, invalid JSON
        fh.write(b'{"source": "one.mp4", "frame": 9')
    assert main(["feed", *two_feeds, "--out", str(out), *common]) == 0
    final = read_jsonl(out)
    keys = [(r["source"], r["frame"]) for r in final]
    assert len(keys) == len(set(keys)) == len(ref)
    assert final[: len(first)] == first
    strip = lambda rs: sorted((r["source"], r["frame"], r["pts"], r["caption"], r["repeat"]) for r in rs)  # noqa: E731
    assert strip(final) == strip(ref)  # resumed dedupe decisions equal an uninterrupted run's
    # a complete file: a rerun adds nothing
    assert main(["feed", *two_feeds, "--out", str(out), *common]) == 0
    assert read_jsonl(out) == final


@needs_av
def test_ctrl_c_stops_cleanly(tmp_path, tiny_bundle, two_feeds):
    out = tmp_path / "out.jsonl"
    args = ["feed", *two_feeds, "--out", str(out), "--bundle", str(tiny_bundle), "--batch-size", "2",
            "--threads", "1", "--every", "0.5", "--dedupe", "0"]
    proc = _start_throttled(0.1, args)
    try:
        _wait_for_lines(proc, out, 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    recs = read_jsonl(out)
    assert 2 <= len(recs) < 48 and len(recs) % 2 == 0  # whole batches only


def test_load_records_repairs_only_a_torn_tail(tmp_path):
    good = '{"source": "a", "frame": 0, "pts": 0.0, "caption": "x", "score": -1.0, "repeat": false}\n'
    p = tmp_path / "o.jsonl"
    p.write_text(good + good.replace('"frame": 0', '"frame": 1') + '{"source": "a", "fr')
    assert [r.frame for r in load_records(p)] == [0, 1]
    assert p.read_text() == good + good.replace('"frame": 0', '"frame": 1')
    p.write_text(good + "garbage\n")  # complete but invalid last line: also an interrupted write
    assert len(load_records(p)) == 1 and p.read_text() == good
    p.write_text(good + "garbage\n" + good)
    with pytest.raises(FeedError, match="line 2"):
        load_records(p)


def _feed_args(tiny_bundle, *extra: str) -> list[str]:
    return ["--bundle", str(tiny_bundle), "--threads", "1", "--quiet", "--every", "1", *extra]


@needs_av
def test_resume_refuses_other_settings_unless_overwrite(tmp_path, tiny_bundle, two_feeds, capfd):
    out = tmp_path / "out.jsonl"
    assert main(["feed", two_feeds[1], "--out", str(out), *_feed_args(tiny_bundle)]) == 0
    first = out.read_bytes()
    settings = json.loads((tmp_path / "out.jsonl.settings.json").read_text())
    assert settings["precision"] == "fp32" and settings["every"] == 1.0 and settings["generation"]["num_beams"] == 1
    capfd.readouterr()
    for changed, says in ((["--num-beams", "2"], "num_beams: recorded 1, now 2"),
                          (["--dedupe", "0"], "dedupe: recorded 0.01, now 0.0"),
                          (["--max-new-tokens", "3"], "max_new_tokens: recorded ")):
        assert main(["feed", two_feeds[1], "--out", str(out), *_feed_args(tiny_bundle, *changed)]) == 2
        err = capfd.readouterr().err
        assert len(err.splitlines()) == 1 and says in err and "--overwrite" in err and str(out) in err, err
        assert out.read_bytes() == first  # nothing mixed in
    # the same settings spelled explicitly (num_beams 1 is the default) resume: nothing to add
    assert main(["feed", two_feeds[1], "--out", str(out), *_feed_args(tiny_bundle, "--num-beams", "1")]) == 0
    assert out.read_bytes() == first
    # --overwrite starts over under the new settings
    assert main(["feed", two_feeds[1], "--out", str(out), *_feed_args(tiny_bundle, "--num-beams", "2", "--overwrite")]) == 0
    again = read_jsonl(out)
    assert len(again) == len(first.splitlines()) and len({r["frame"] for r in again}) == len(again)
    assert json.loads((tmp_path / "out.jsonl.settings.json").read_text())["generation"]["num_beams"] == 2
    # results without recorded settings (an older edgecap, or a deleted sidecar) are not resumed blindly
    (tmp_path / "out.jsonl.settings.json").unlink()
    assert main(["feed", two_feeds[1], "--out", str(out), *_feed_args(tiny_bundle, "--num-beams", "2")]) == 2
    assert "no recorded settings" in capfd.readouterr().err


@needs_av
def test_sources_match_on_the_resolved_path(tmp_path, tiny_bundle, monkeypatch, capfd):
    cam = tmp_path / "cam1"
    cam.mkdir()
    write_video(cam / "clip.mp4", [pattern(i // 4) for i in range(12)], fps=4)
    (tmp_path / "link.mp4").symlink_to(cam / "clip.mp4")
    out = tmp_path / "out.jsonl"
    monkeypatch.chdir(cam)
    assert main(["feed", "clip.mp4", "--out", str(out), *_feed_args(tiny_bundle)]) == 0
    first = out.read_bytes()
    assert {r["source"] for r in read_jsonl(out)} == {os.path.realpath(cam / "clip.mp4")}
    monkeypatch.chdir(tmp_path)
    for typed in ("cam1/clip.mp4", "./cam1/../cam1/clip.mp4", "link.mp4"):
        capfd.readouterr()
        assert main(["feed", typed, "--out", str(out), *_feed_args(tiny_bundle)[:-3], "--every", "1"]) == 0
        assert out.read_bytes() == first, typed  # recognised as done, not captioned again
        assert "0 frames written" in capfd.readouterr().err


@needs_av
def test_out_dash_writes_json_lines_to_stdout(tmp_path, tiny_bundle, two_feeds, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "ref.jsonl"
    assert main(["feed", *two_feeds, "--out", str(ref), *_feed_args(tiny_bundle)]) == 0
    capfd.readouterr()
    assert main(["feed", *two_feeds, "--out", "-", *_feed_args(tiny_bundle), "--vtt", "subs"]) == 0
    got = capfd.readouterr()
    assert [json.loads(line) for line in got.out.splitlines()] == read_jsonl(ref)
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.settings.json").exists()
    assert sorted(p.name for p in (tmp_path / "subs").rglob("*.vtt")) == ["one.vtt", "two.vtt"]
    for bad, says in ((["--overwrite"], "nothing to resume"), (["--ray"], "folder"), (["--format", "parquet"], "--ray")):
        assert main(["feed", two_feeds[0], "--out", "-", *_feed_args(tiny_bundle), *bad]) == 2
        err = capfd.readouterr().err
        assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


# --- subtitles -----------------------------------------------------------------------------------


def test_merge_cues_and_formats():
    samples = [(3.0, "b"), (0.0, "a"), (1.0, "a"), (2.0, "a"), (4.0, "a"), (5.0, ""), (6.0, "c <&> d")]
    cues = merge_cues(samples, every=1.0)
    assert cues == [Cue(0.0, 3.0, "a"), Cue(3.0, 4.0, "b"), Cue(4.0, 5.0, "a"), Cue(6.0, 7.0, "c <&> d")]
    vtt = to_vtt([Cue(0.0, 3.5, "a"), Cue(3661.25, 3662.0, "c <&> d")])
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:03.500\na\n\n01:01:01.250 --> 01:01:02.000\nc &lt;&amp;&gt; d\n"
    srt = to_srt([Cue(0.0, 3.5, "a"), Cue(3661.25, 3662.0, "b")])
    assert srt == "1\n00:00:00,000 --> 00:00:03,500\na\n\n2\n01:01:01,250 --> 01:01:02,000\nb\n"


def _parse_cues(text: str, sep: str) -> list[tuple[float, float, str]]:
    ts = rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d)"
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        m = re.fullmatch(ts + " --> " + ts, lines[-2])
        assert m, block
        g = [int(x) for x in m.groups()]
        cues.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
                     lines[-1]))
    return cues


def test_subtitle_names_mirror_the_sources_layout(tmp_path):
    from edgecap.feeds.output import subtitle_names
    from edgecap.feeds.sources import FeedSource

    root = tmp_path / "night"
    names = [root / "cam1" / "clip.mp4", root / "cam2" / "clip.mp4", root / "cam2" / "photos.mp4",
             root / "cam2" / "photos.webm", root / "cam3" / "sub" / "x.mkv", root / "cam3" / "x.mkv.avi"]
    srcs = [FeedSource(str(n), "video", (str(n),)) for n in names] + [FeedSource(str(root / "frames"), "frames", ())]
    assert subtitle_names(srcs) == {
        str(names[0]): "cam1/clip", str(names[1]): "cam2/clip",
        str(names[2]): "cam2/photos.mp4", str(names[3]): "cam2/photos.webm",  # same stem: keep the extension
        str(names[4]): "cam3/sub/x", str(names[5]): "cam3/x.mkv",
    }
    assert subtitle_names(srcs[:1]) == {str(names[0]): "clip"}  # one video: just its name
    assert len(set(subtitle_names(srcs).values())) == 6


@needs_av
def test_vtt_and_srt_files(tmp_path, tiny_bundle, scenes_video, two_feeds):
    out = tmp_path / "out.jsonl"
    rc = main(["feed", str(scenes_video), two_feeds[1], "--out", str(out), "--bundle", str(tiny_bundle),
               "--vtt", str(tmp_path / "vtt"), "--srt", str(tmp_path / "srt"), "--quiet", "--threads", "1"])
    assert rc == 0
    recs = [r for r in read_jsonl(out) if r["source"] == str(scenes_video)]
    expected = []  # consecutive equal captions merged; ends at the next sample, last one + every
    for i, r in enumerate(recs):
        end = recs[i + 1]["pts"] if i + 1 < len(recs) else r["pts"] + 1.0
        if expected and expected[-1][2] == r["caption"]:
            expected[-1][1] = end
        else:
            expected.append([r["pts"], end, r["caption"]])
    assert len(expected) == 3  # scenes A, B, A
    # names mirror the sources' layout below the deepest folder holding both videos
    cam, two = Path(scenes_video).parent.name + "/cam", Path(two_feeds[1]).parent.name + "/two"
    vtt = (tmp_path / "vtt" / f"{cam}.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n")
    assert _parse_cues(vtt.split("\n", 2)[2], ".") == [tuple(c) for c in expected]
    srt = (tmp_path / "srt" / f"{cam}.srt").read_text()
    blocks = srt.strip().split("\n\n")
    assert [b.split("\n")[0] for b in blocks] == ["1", "2", "3"]
    assert _parse_cues(srt, ",") == [tuple(c) for c in expected]
    assert (tmp_path / "vtt" / f"{two}.vtt").is_file() and (tmp_path / "srt" / f"{two}.srt").is_file()


# --- progress ------------------------------------------------------------------------------------


def test_progress_terminal_and_log_modes():
    from edgecap.feeds import FrameCaption

    batch = [FrameCaption("cam.mp4", i, float(i), "x", 0.0, False) for i in range(5)]
    tty = io.StringIO()
    p = Progress(tty, tty=True)
    p.status.last = float("-inf")  # due at once
    p.source_started("cam.mp4", 20)
    p.frames_written(batch)
    p.problem(FeedProblem("bad.mp4", "frame 3 (pts 1.000 s)", "decode error"))
    p.close()
    text = tty.getvalue()
    assert "\r\x1b[K" in text and "cam.mp4 5/20, ETA" in text and "frames/s" in text
    assert "edgecap: bad.mp4: frame 3 (pts 1.000 s): decode error\n" in text
    log = io.StringIO()
    p = Progress(log, tty=False, interval=0)
    p.source_started("cam.mp4", None)
    p.frames_written(batch)
    assert "\r" not in log.getvalue() and log.getvalue().startswith("edgecap: feed: 5 frames")
    quiet = io.StringIO()
    p = Progress(quiet, quiet=True, tty=True)
    p.frames_written(batch)
    assert quiet.getvalue() == ""


# --- the demo model: captions of changed scenes are the scenes' canonical captions -----------------


def _demo_scenes_module():
    spec = importlib.util.spec_from_file_location("edgecap_demo_scenes", DEMO / "scenes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def demo_captioner(tmp_path_factory):
    ckpt = DEMO / "checkpoint"
    if not (ckpt / "config.json").is_file():
        pytest.skip("demo checkpoint not trained yet (models/demo/checkpoint/config.json missing)")
    from edgecap_export.exporter import export

    bundle = export(str(ckpt), tmp_path_factory.mktemp("demo") / "bundle")
    return Captioner(bundle, precision="fp32", threads=2)


@needs_av
def test_demo_scene_changes_get_canonical_captions(tmp_path, demo_captioner):
    scenes = _demo_scenes_module()
    candidates = scenes.generate(11, 12, size=96)
    got = demo_captioner.caption([img for img, _ in candidates])
    # scenes the model gets right as still images (the feed must not lose that on the way)
    chosen = [(np.asarray(img), cap) for (img, cap), c in zip(candidates, got) if c.text == cap][:4]
    assert len(chosen) >= 3, "demo model gets too few scenes right to test with"
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    opts = {"crf": "12"} if codec == "libx264" else {"qscale": "2"}
    video = scene_video(tmp_path / "demo.mp4", [img for img, _ in chosen], seconds=3, fps=2, codec=codec, options=opts)
    recs = list(demo_captioner.caption_feed(video, every=1.0, batch_size=4))
    assert [r.pts for r in recs] == pytest.approx([float(i) for i in range(3 * len(chosen))])
    for r in recs:
        assert r.caption == chosen[int(r.pts // 3)][1], r
    assert [r.repeat for r in recs] == [False, True, True] * len(chosen)


# --- confidence (issue 13) -------------------------------------------------------------------------


def test_records_carry_the_caption_confidence(tmp_path, captioner):
    """Feed records carry Caption.confidence (repeats: that of the caption they repeat), written to and
    read back from the JSON lines; outputs of older versions, without it, still load (None)."""
    from PIL import Image

    from edgecap.feeds import encode_records

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(pattern(i // 2)).save(folder / f"f{i}.png")
    got = list(captioner.caption_feed(str(folder), every=1.0, fps=1, dedupe=0.01))
    direct = captioner.caption([str(folder / f"f{i}.png") for i in range(4)])
    assert [r.confidence for r in got] == pytest.approx([c.confidence for c in direct[::2] for _ in range(2)])
    assert [r.repeat for r in got] == [False, True, False, True]
    out = tmp_path / "out.jsonl"
    out.write_bytes(encode_records(got, {}))
    assert [r.confidence for r in load_records(out)] == [r.confidence for r in got]
    old = json.dumps({"source": "cam.mp4", "frame": 0, "pts": 0.0, "caption": "x", "score": -1.0, "repeat": False})
    out.write_text(old + "\n")
    assert load_records(out)[0].confidence is None
