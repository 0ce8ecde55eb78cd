"""Tests for the synthetic scene world of the bundled demo model (models/demo/scenes.py)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENES_PY = ROOT / "models" / "demo" / "scenes.py"


@pytest.fixture(scope="module")
def scenes():
    name = "demo_scenes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCENES_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


def grammar(sc) -> re.Pattern:
    np_ = rf"a ({'|'.join(sc.SIZES)}) ({'|'.join(sc.PALETTE)}) ({'|'.join(sc.SHAPES)})"
    rel = "|".join(sc.RELATIONS.values())
    return re.compile(rf"^{np_}(?: ({rel}) {np_}(?: and {np_})?)?$")


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_generate_is_deterministic(scenes):
    a = scenes.generate(7, 12, size=64)
    b = scenes.generate(7, 12, size=64)
    assert [c for _, c in a] == [c for _, c in b]
    assert [png_bytes(i) for i, _ in a] == [png_bytes(i) for i, _ in b]
    c = scenes.generate(8, 12, size=64)
    assert [png_bytes(i) for i, _ in a] != [png_bytes(i) for i, _ in c]
    img, _ = a[0]
    assert img.mode == "RGB" and img.size == (64, 64)


def test_captions_follow_grammar(scenes):
    pattern = grammar(scenes)
    counts = {1: 0, 2: 0, 3: 0}
    relations = set()
    for scene in scenes.generate_scenes(3, 300):
        text = scenes.caption(scene)
        m = pattern.match(text)
        assert m, text
        groups = [g for g in m.groups() if g is not None]
        n = len(scene.objects)
        counts[n] += 1
        assert len(groups) == {1: 3, 2: 7, 3: 10}[n]
        nps = [groups[0:3]] + ([groups[4:7]] if n > 1 else []) + ([groups[7:10]] if n > 2 else [])
        # the caption names every object, in palette order of the (distinct) colours
        assert [tuple(t) for t in nps] == [(o.size, o.colour, o.shape) for o in scene.objects]
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == n
        assert colours == sorted(colours, key=scenes.PALETTE.index)
        if n > 1:
            assert groups[3] == scenes.RELATIONS[scene.relation]
            relations.add(scene.relation)
        else:
            assert scene.relation is None
    assert all(c > 50 for c in counts.values()), counts
    assert relations == set(scenes.RELATIONS)
    assert max(len(scenes.caption(s).split()) for s in scenes.generate_scenes(3, 300)) <= 17


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_relation_is_geometrically_true(scenes):
    checked = 0
    for scene in scenes.generate_scenes(11, 200):
        subject, *others = scene.objects
        for other in others:
            assert scenes.relation_holds(subject, other, scene.relation)
            sx0, sy0, sx1, sy1 = subject.box()
            ox0, oy0, ox1, oy1 = other.box()
            if scene.relation == "left":
                assert sx1 < ox0
            elif scene.relation == "right":
                assert ox1 < sx0
            elif scene.relation == "above":
                assert sy1 < oy0
            else:
                assert oy1 < sy0
        if len(scene.objects) < 2 or checked >= 25:
            continue
        # check the drawn pixels too: render without noise and find each object's colour
        quiet = scenes.Scene(
            scene.objects, scene.relation,
            scenes.Background("solid", (255, 255, 255), (255, 255, 255), 0.0, 0.0, 0),
        )
        img = np.asarray(scenes.render(quiet, 128)).astype(int)
        centres = []
        for o in scene.objects:
            mask = (np.abs(img - np.array(o.rgb)).sum(-1) < 6)
            assert mask.sum() > 20
            centres.append(_centroid(mask))
        (sx, sy), rest = centres[0], centres[1:]
        for ox, oy in rest:
            dx, dy = ox - sx, oy - sy
            expect = {"left": dx > abs(dy), "right": -dx > abs(dy), "above": dy > abs(dx), "below": -dy > abs(dx)}
            assert expect[scene.relation], (scenes.caption(scene), dx, dy)
        checked += 1
    assert checked == 25


def test_objects_do_not_overlap_and_stay_inside(scenes):
    for scene in scenes.generate_scenes(5, 200):
        for i, a in enumerate(scene.objects):
            x0, y0, x1, y1 = a.box()
            assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
            for b in scene.objects[i + 1 :]:
                assert scenes._separated(a, b)


def test_cli_writes_pngs_and_captions(tmp_path, scenes):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCENES_PY), "--seed", "42", "--count", "5", "--out", str(out), "--size", "64"]
    subprocess.run(cmd, check=True, capture_output=True)
    lines = [json.loads(l) for l in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    expected = scenes.generate(42, 5, size=64)
    pattern = grammar(scenes)
    for line, (img, cap) in zip(lines, expected):
        assert set(line) == {"file", "caption"}
        assert line["caption"] == cap and pattern.match(cap)
        assert (out / line["file"]).read_bytes() == png_bytes(img)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    out2 = tmp_path / "out2"
    subprocess.run(cmd[:-3] + [str(out2), "--size", "64"], check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in out2.iterdir()} == first


def test_shipped_samples_match_generator(scenes):
    samples = ROOT / "models" / "demo" / "samples"
    lines = [json.loads(l) for l in (samples / "captions.jsonl").read_text().splitlines()]
    assert len(lines) >= 6
    pattern = grammar(scenes)
    for line in lines:
        assert pattern.match(line["caption"])
        assert (samples / line["file"]).is_file()
