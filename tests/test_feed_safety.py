"""One writer per feed output (issue 18): a second `edgecap feed` on the same --out is refused while
the first runs, and a SIGKILLed run leaves nothing to clean up before a resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from edgecap.cli import main
from edgecap.feeds.output import lock_file
from edgecap.feeds.sources import FeedSource, relative_layout
from edgecap.outputlock import OutputBusyError, OutputLock

from test_feeds import (  # noqa: F401 (fixtures)
    _start_throttled, _wait_for_lines, needs_av, read_jsonl, tiny_bundle, two_feeds,
)


def _common(bundle) -> list[str]:
    return ["--bundle", str(bundle), "--every", "0.5", "--batch-size", "2", "--threads", "1", "--quiet"]


@needs_av
def test_a_second_feed_on_one_output_is_refused_and_a_kill_frees_it(tmp_path, tiny_bundle, two_feeds):
    out = tmp_path / "out.jsonl"
    first = _start_throttled(0.2, ["feed", *two_feeds, "--out", str(out), *_common(tiny_bundle)])
    try:
        _wait_for_lines(first, out, 2)
        second = subprocess.run([sys.executable, "-m", "edgecap", "feed", *two_feeds, "--out", str(out),
                                 *_common(tiny_bundle)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and str(out) in lines[0] and f"pid {first.pid}" in lines[0], second.stderr
        # different settings: refused the same way, before the settings are even compared
        other = subprocess.run([sys.executable, "-m", "edgecap", "feed", *two_feeds, "--out", str(out),
                                *_common(tiny_bundle), "--every", "2"], capture_output=True, text=True, timeout=120)
        assert other.returncode == 2 and f"pid {first.pid}" in other.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    partial = read_jsonl(out)
    assert lock_file(out).exists()  # left behind on purpose, unlocked: the kernel dropped the flock
    assert main(["feed", *two_feeds, "--out", str(out), *_common(tiny_bundle)]) == 0  # resume, no cleanup
    final = read_jsonl(out)
    keys = [(r["source"], r["frame"]) for r in final]
    assert final[: len(partial)] == partial and len(keys) == len(set(keys)) == 30 + 18


def test_lock_in_process_and_release(tmp_path):
    out = tmp_path / "o.jsonl"
    with OutputLock(out, lock_file(out)):
        with pytest.raises(OutputBusyError, match=f"o.jsonl: another edgecap feed \\(pid {os.getpid()}\\)"):
            OutputLock(out, lock_file(out)).acquire()
    with OutputLock(out, lock_file(out)):  # released: free again
        pass


def test_a_symlinked_lock_file_is_not_followed(tmp_path):
    out, victim = tmp_path / "o.jsonl", tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, lock_file(out))
    with pytest.raises(Exception, match="symbolic link"):
        OutputLock(out, lock_file(out)).acquire()
    assert victim.read_text() == "keep me"


def test_a_ray_output_folder_has_one_driver(tmp_path, tiny_bundle, two_feeds):
    """A second `--ray` driver on a folder another holds exits 2 before it starts any Ray work."""
    pytest.importorskip("ray")
    out = tmp_path / "results"
    out.mkdir()
    started = time.monotonic()
    with OutputLock(out, out / "_lock"):
        code = main(["feed", *two_feeds, "--out", str(out), "--ray", *_common(tiny_bundle)])
    assert code == 2 and time.monotonic() - started < 60


def test_glob_sources_that_look_alike_get_their_own_outputs(tmp_path):
    """`frames/a*.png` and `frames/a?.png` used to map to one result file (and one subtitle file)."""
    sources = [FeedSource(str(tmp_path / "frames" / p), "frames", ()) for p in ("a*.png", "a?.png", "b.mp4")]
    names = relative_layout(sources)
    assert len(set(names.values())) == 3 and names[sources[2].name] == "b.mp4"


def test_feed_output_and_subtitles_are_not_redirected(tmp_path, tiny_bundle, two_feeds, capfd):
    """--out that is a symbolic link is refused (appending through it would write its target);
    a link planted where a subtitle file goes is replaced, its target untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out.jsonl"
    os.symlink(victim, out)
    assert main(["feed", two_feeds[0], "--out", str(out), *_common(tiny_bundle)]) == 2
    assert "is a symbolic link" in capfd.readouterr().err and victim.read_text() == "keep me"
    subs = tmp_path / "subs"
    subs.mkdir()
    os.symlink(victim, subs / "one.vtt")
    assert main(["feed", two_feeds[0], "--out", str(tmp_path / "real.jsonl"), "--vtt", str(subs),
                 *_common(tiny_bundle)]) == 0
    assert victim.read_text() == "keep me" and (subs / "one.vtt").read_text().startswith("WEBVTT")
