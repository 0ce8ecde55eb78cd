"""The demo bundle shipped as package data: found without a --bundle, runs without torch, captions
held-out scenes well enough to be the project's quality yardstick."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

from test_no_torch import BLOCKER

from conftest import REPO

SEED = 4242  # never used for training (seed 1), evaluation (1234) or the samples (9000)


def scenes_module():
    if "demo_scenes" in sys.modules:
        return sys.modules["demo_scenes"]
    spec = importlib.util.spec_from_file_location("demo_scenes", REPO / "models" / "demo" / "scenes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["demo_scenes"] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def test_default_bundle_is_installed_with_the_package():
    from edgecap import default_bundle_dir
    from edgecap.bundle import load_bundle

    path = default_bundle_dir()
    assert path is not None, "edgecap/data/demo-bundle is missing"
    bundle = load_bundle(path)  # checksums of every precision verified
    assert {"fp32", "int8"} <= set(bundle.precisions)
    assert bundle.manifest.verification["fp32"].token_agreement == 1.0


def test_demo_captions_held_out_scenes_without_torch(tmp_path):
    scenes = scenes_module().generate(SEED, 60, size=96)
    for i, (image, _) in enumerate(scenes):
        image.save(tmp_path / f"s{i:03d}.png")
    script = BLOCKER + textwrap.dedent(
        f"""
        import json
        from edgecap import Captioner
        paths = [{str(tmp_path)!r} + f"/s{{i:03d}}.png" for i in range({len(scenes)})]
        out = {{}}
        for precision in ("fp32", "int8"):
            out[precision] = [c.text for c in Captioner(precision=precision).caption(paths, batch_size=20)]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
        print(json.dumps({{"captions": out, "loaded": loaded}}))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    truth = [c for _, c in scenes]
    for precision, captions in out["captions"].items():
        exact = sum(a == b for a, b in zip(captions, truth)) / len(truth)
        assert exact >= 0.85, f"{precision}: {exact:.0%} exact match on held-out scenes"


def test_cli_without_bundle_uses_the_demo():
    res = subprocess.run(
        [sys.executable, "-m", "edgecap", "caption", str(REPO / "models" / "demo" / "samples")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    truth = {
        json.loads(line)["file"]: json.loads(line)["caption"]
        for line in (REPO / "models" / "demo" / "samples" / "captions.jsonl").read_text().splitlines()
    }
    got = {line.split("\t")[0].rsplit("/", 1)[-1]: line.split("\t")[1] for line in res.stdout.splitlines()}
    assert set(got) == set(truth)
    assert sum(got[f] == truth[f] for f in truth) >= len(truth) - 1
