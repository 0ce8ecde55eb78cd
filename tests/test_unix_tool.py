"""`edgecap` as a Unix tool (issue 18): a closed pipe ends it quietly with 141, SIGTERM and SIGINT stop
it between lines with one message and 143/130, odd file names never split an output line, and
--json is UTF-8."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecap.signals import escape_field, tsv_line

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "models" / "demo" / "samples").glob("*.png"))

# the caption command, slowed per batch so a signal lands mid-run (the runtime only: no torch)
SLOW = """
import sys, time
import edgecap.captioner as c
orig = c.Captioner.encode
def slow(self, pixels, *args, **kwargs):
    time.sleep(0.3)
    return orig(self, pixels, *args, **kwargs)
c.Captioner.encode = slow
from edgecap.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    for i in range(40):
        shutil.copy(SAMPLES[i % len(SAMPLES)], d / f"img{i:02d}.png")
    return d


def _start(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", SLOW, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_a_closed_pipe_ends_quietly_with_141(many):
    """`edgecap caption big/ | head -2` printed "internal error" and exited 3."""
    proc = _start(["caption", many, "--batch-size", "2"])
    first_two = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()  # what head does after its lines
    _, err = proc.communicate(timeout=120)
    assert all(line.endswith(b"\n") for line in first_two)
    assert proc.returncode == 141 and err == b"", err


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, b"terminated"), (signal.SIGINT, 130, b"interrupted")])
def test_signals_stop_between_lines_with_one_message(many, sig, code, word):
    proc = _start(["caption", many, "--batch-size", "2", "--json"])
    first = proc.stdout.readline()
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    lines = (first + rest).decode().splitlines(keepends=True)
    assert proc.returncode == code, err
    assert err.count(b"\n") == 1 and word in err and b"Traceback" not in err
    assert 1 <= len(lines) < 40 and all(json.loads(line) and line.endswith("\n") for line in lines)


def test_feed_sigterm_is_143(tmp_path, many):
    out = tmp_path / "out.jsonl"
    proc = _start(["feed", many, "--out", out, "--batch-size", "2", "--dedupe", "0", "--quiet"])
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and b"terminated" in err and b"rerun the same command" in err
    assert out.read_bytes().endswith(b"\n")


def test_odd_file_names_stay_on_their_line(tmp_path):
    names = ["line\nbreak.png", "tab\there.png", "back\\slash.png", "画像.png"]
    for name in names:
        shutil.copy(SAMPLES[0], tmp_path / name)
    res = subprocess.run([sys.executable, "-m", "edgecap", "caption", *[str(tmp_path / n) for n in names]],
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        path = str(tmp_path / name)
        assert line.startswith(tsv_line([path, ""]).rstrip("\t"))
    assert lines[0].startswith("\\") and "line\\nbreak.png" in lines[0]
    assert lines[3].startswith(str(tmp_path / "画像.png"))  # nothing to escape: as is
    js = subprocess.run([sys.executable, "-m", "edgecap", "caption", str(tmp_path / names[3]), "--json"],
                        capture_output=True, timeout=120, env=dict(os.environ, LC_ALL="C", PYTHONIOENCODING=""))
    assert "画像".encode() in js.stdout and b"\\u753b" not in js.stdout  # UTF-8, not \\u escapes
    assert json.loads(js.stdout)["path"].endswith("画像.png")


def test_escaping_round_trips():
    raw = "a\\b\tc\nd\re"
    assert escape_field(raw) == "a\\\\b\\tc\\nd\\re"
    assert tsv_line(["plain", "text"]) == "plain\ttext"
