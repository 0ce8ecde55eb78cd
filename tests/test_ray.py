"""`edgecap feed --ray` and `edgecap.ray.caption_dataset` on a real Ray cluster.

One module-wide cluster: two Ray nodes started by `ray.cluster_utils.Cluster` on this machine (a
head with 1 CPU and a worker node with 2, each its own raylet and worker processes), shut down at
the end. The feed drivers run as subprocesses, as a user's would: results are compared with
`edgecap feed` on the same sources, and faults are injected by killing a Captioner actor's
process and the driver itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'edgecap[ray]')")
pytest.importorskip("ray.data")
av = pytest.importorskip("av", reason="PyAV not installed (pip install 'edgecap[feeds]')")

from edgecap.cli import main  # noqa: E402
from test_feeds import pattern, read_jsonl, write_video  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEYS = ("source", "frame", "pts", "caption", "score", "repeat", "model", "precision")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.add_node(num_cpus=2)
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def tiny_bundle(export_tiny):
    return export_tiny("vit", "gpt2")[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two cameras' clips (same file names), an MJPEG AVI, a frame folder and a corrupt file."""
    root = tmp_path_factory.mktemp("archive")
    for cam, k in (("cam1", 0), ("cam2", 30)):
        (root / cam).mkdir()
        write_video(root / cam / "clip.mp4", [pattern(k + i // 6) for i in range(36)], fps=4)  # 9 s, scene every 1.5 s
    write_video(root / "cam2" / "door.avi", [pattern(60 + i // 10) for i in range(40)], fps=4, codec="mjpeg")
    frames = root / "frames"
    frames.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(pattern(80 + i // 2)).save(frames / f"{i:03d}.png")
    (root / "cam2" / "broken.mp4").write_text("not a video at all\n" * 30)
    return root


def _sources(archive: Path) -> list[str]:
    return [str(archive / "cam1" / "clip.mp4"), str(archive / "cam2" / "clip.mp4"), str(archive / "cam2" / "door.avi"),
            str(archive / "frames"), str(archive / "cam2" / "broken.mp4")]


def _common(bundle) -> list[str]:
    return ["--bundle", str(bundle), "--every", "0.5", "--batch-size", "3", "--threads", "1"]


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "edgecap", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "edgecap", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _results(out: Path) -> list[dict]:
    """Every record of every result file under `out`."""
    recs = []
    for path in sorted(out.rglob("*.jsonl")):
        recs += read_jsonl(path)
    return recs


def _key(r: dict) -> tuple:
    return tuple(r[k] for k in KEYS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bundle, archive):
    """`edgecap feed` (one machine) on the same sources."""
    out = tmp_path_factory.mktemp("reference") / "feed.jsonl"
    assert main(["feed", *_sources(archive), "--out", str(out), "--quiet", *_common(tiny_bundle)]) == 1
    recs = read_jsonl(out)
    assert {Path(r["source"]).name for r in recs} == {"clip.mp4", "door.avi", "frames"}
    assert any(r["repeat"] for r in recs) and not all(r["repeat"] for r in recs)
    return recs


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("timed out")


def _check_complete(out: Path, reference: list[dict]) -> None:
    got = _results(out)
    keys = [(r["source"], r["frame"]) for r in got]
    assert len(keys) == len(set(keys)), "a frame appears twice"
    assert sorted(map(_key, got)) == sorted(map(_key, reference))


# --- the same results as edgecap feed, a corrupt source, parquet, resume, settings -------------------


def test_ray_feed_equals_edgecap_feed(cluster, tiny_bundle, archive, reference, tmp_path):
    out = tmp_path / "out"
    res = _run(["feed", *_sources(archive), "--out", str(out), "--ray", cluster.address, "--actors", "2",
                "--vtt", str(tmp_path / "subs"), *_common(tiny_bundle)])
    assert res.returncode == 1, res.stderr  # the corrupt source
    assert "Traceback" not in res.stderr
    broken = [line for line in res.stderr.splitlines() if "broken.mp4" in line and "failed:" not in line]
    assert len(broken) == 1 and "cannot open as video" in broken[0], res.stderr
    # one file per source, mirroring the archive's layout; frame for frame what edgecap feed wrote
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl"))
    assert names == ["cam1/clip.mp4.jsonl", "cam2/clip.mp4.jsonl", "cam2/door.avi.jsonl", "frames.jsonl"]
    for path in out.rglob("*.jsonl"):
        recs = read_jsonl(path)
        assert [r["frame"] for r in recs] == sorted(r["frame"] for r in recs) and len({r["source"] for r in recs}) == 1
    _check_complete(out, reference)
    summary = json.loads((out / "_summary.json").read_text())
    assert [f["source"] for f in summary["failed"]] == [str(archive / "cam2" / "broken.mp4")]
    assert summary["written"] == 4 and summary["frames"] == len(reference)
    assert sorted(str(p.relative_to(tmp_path / "subs")) for p in (tmp_path / "subs").rglob("*.vtt")) == [
        "cam1/clip.vtt", "cam2/clip.vtt", "cam2/door.vtt"]

    # resume: complete sources are skipped (files untouched); only the failed one is tried again
    stat = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.jsonl")}
    again = _run(["feed", *_sources(archive), "--out", str(out), "--ray", cluster.address, "--quiet",
                  *_common(tiny_bundle)])
    assert again.returncode == 1 and "broken.mp4" in again.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.jsonl")} == stat
    good = [s for s in _sources(archive) if "broken" not in s]
    skip = _run(["feed", *good, "--out", str(out), "--ray", "--quiet", *_common(tiny_bundle)])
    assert skip.returncode == 0, skip.stderr  # nothing left to do: no cluster needed at all

    # other settings: refused with one line, unless --overwrite
    refused = _run(["feed", *good, "--out", str(out), "--ray", cluster.address, *_common(tiny_bundle), "--every", "1"])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "every: recorded 0.5, now 1.0" in refused.stderr and "--overwrite" in refused.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.jsonl")} == stat


def test_parquet_results(cluster, tiny_bundle, archive, reference, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "pq"
    good = [s for s in _sources(archive) if "broken" not in s]
    res = _run(["feed", *good, "--out", str(out), "--ray", cluster.address, "--format", "parquet", "--quiet",
                *_common(tiny_bundle)])
    assert res.returncode == 0, res.stderr
    recs = []
    for path in sorted(out.rglob("*.parquet")):
        table = pq.read_table(path)
        assert json.loads(table.schema.metadata[b"edgecap.settings"])["every"] == 0.5
        recs += table.to_pylist()
    assert len(recs) == len(reference)
    assert sorted(map(_key, recs)) == sorted(map(_key, reference))


# --- faults ----------------------------------------------------------------------------------------


def _actor_pids(cluster) -> list[int]:
    """Processes of this cluster's Captioner actors (children of its raylets, named by Ray)."""
    import psutil

    raylets = {p.process.pid for node in cluster.list_all_nodes()
               for p in node.all_processes.get("raylet", [])}
    pids = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["ppid"] in raylets and "_CaptionActor" in cmd:
            pids.append(proc.info["pid"])
    return pids


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Enough sources that a run is still going after the first ones are written."""
    root = tmp_path_factory.mktemp("many")
    return [str(write_video(root / f"cam{n}.mp4", [pattern(100 + n * 10 + i // 8) for i in range(64)], fps=4))
            for n in range(12)]


@pytest.fixture(scope="module")
def many_reference(tmp_path_factory, tiny_bundle, many):
    out = tmp_path_factory.mktemp("many-ref") / "feed.jsonl"
    assert main(["feed", *many, "--out", str(out), "--quiet", *_common(tiny_bundle), "--every", "0.25"]) == 0
    return read_jsonl(out)


def test_a_killed_captioner_actor_loses_and_doubles_nothing(cluster, tiny_bundle, many, many_reference, tmp_path):
    out = tmp_path / "out"
    proc = _start(["feed", *many, "--out", str(out), "--ray", cluster.address, "--actors", "2", "--quiet",
                   *_common(tiny_bundle), "--every", "0.25", "--batch-size", "2"])
    try:
        _wait_for(lambda: len(list(out.rglob("*.jsonl"))) >= 1 and _actor_pids(cluster), proc)
        victim = _actor_pids(cluster)[0]
        os.kill(victim, signal.SIGKILL)
        written_at_kill = len(list(out.rglob("*.jsonl")))
        still_running = proc.poll() is None
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert still_running and written_at_kill < len(many), "the run ended before the actor was killed"
    _check_complete(out, many_reference)


def test_a_killed_driver_reruns_to_exactly_once(cluster, tiny_bundle, many, many_reference, tmp_path):
    out = tmp_path / "out"
    args = ["feed", *many, "--out", str(out), "--ray", cluster.address, "--quiet", *_common(tiny_bundle),
            "--every", "0.25", "--batch-size", "2"]
    proc = _start(args)
    try:
        _wait_for(lambda: len(list(out.rglob("*.jsonl"))) >= 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = {p: p.read_bytes() for p in out.rglob("*.jsonl")}
    assert 2 <= len(first) < len(many)
    for path in first:  # what is there is whole: every line a record, the source's frames all there
        recs = read_jsonl(path)
        assert len(recs) == sum(r["source"] == recs[0]["source"] for r in many_reference)
    res = _run(args)
    assert res.returncode == 0, res.stderr
    assert {p: p.read_bytes() for p in first} == first  # finished sources were not redone
    _check_complete(out, many_reference)
    assert not list(out.rglob(".*.tmp"))


# --- the Python entry point on a user's own dataset ----------------------------------------------------


def test_caption_dataset_on_a_users_dataset(cluster, tiny_bundle, sample_images):
    import io

    from PIL import Image

    from edgecap import Captioner
    from edgecap.ray import caption_dataset

    png = io.BytesIO()
    Image.fromarray(sample_images[1]).save(png, format="PNG")
    files = [{"id": 1, "image": png.getvalue()}, {"id": 3, "image": b"garbage"}]  # as read_binary_files gives them
    # arrays of one shape, as read_images gives them
    arrays = [{"id": i, "image": np.asarray(Image.fromarray(img).resize((48, 40)))} for i, img in enumerate(sample_images)]
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        got = caption_dataset(ray.data.from_items(arrays), tiny_bundle, actors=1, batch_size=2).take_all()
        encoded = caption_dataset(ray.data.from_items(files), tiny_bundle, actors=1).take_all()
    finally:
        ray.shutdown()
    expected = Captioner(tiny_bundle, threads=1).caption([a["image"] for a in arrays])
    assert {r["id"]: r["caption"] for r in got} == {i: c.text for i, c in enumerate(expected)}
    assert all("image" not in r and r["error"] == "" for r in got)
    by_id = {r["id"]: r for r in encoded}
    assert by_id[1]["caption"] == Captioner(tiny_bundle, threads=1).caption([sample_images[1]])[0].text
    assert by_id[3]["caption"] == "" and by_id[3]["error"] and np.isnan(by_id[3]["score"])


# --- without a cluster -------------------------------------------------------------------------------

NO_RAY = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError("No module named " + repr(name), name=name)
sys.meta_path.insert(0, _Block())
from edgecap.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_ray_exit_2_naming_the_extra(tmp_path, archive):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", NO_RAY, "feed", str(archive / "cam1" / "clip.mp4"), "--out",
                          str(tmp_path / "o"), "--ray"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    from edgecap.extras import install_command

    assert res.stderr.count("\n") == 1 and install_command("ray") in res.stderr and "Traceback" not in res.stderr


def test_progress_line():
    import io

    from edgecap.ray.driver import RayProgress

    log = io.StringIO()
    p = RayProgress(log, sources=4, tty=False, interval=0)
    p.frames_before, p.sources_done = 10, 1  # one source done by an earlier run
    p.estimates = {"a": 20, "b": None}
    p.frames, p.t_first, p.first_frames = 15, time.monotonic() - 2.0, 5
    line = p.line()
    # 4 sources: 1 done, 2 started (one estimated at 20), 1 not started (guessed at the mean, 20)
    assert line.startswith("ray: 1/4 sources, 25/~50 frames, 5.0 frames/s, ETA 0:05"), line
    p.update(force=True)
    assert log.getvalue() == f"edgecap: {line}\n"


def test_florence2_records_carry_the_parsed_answer(cluster, florence2, archive, tmp_path):
    """Ray records are `edgecap feed`'s, Florence-2's per-frame detections ("parsed") included; the
    frames' sizes travel with the read rows, so boxes are in the frames' pixels."""
    _, bundle = florence2
    sources = [str(archive / "cam1" / "clip.mp4"), str(archive / "frames")]
    common = ["--bundle", str(bundle), "--every", "1.5", "--prompt", "<OD>", "--threads", "1", "--batch-size", "3"]
    ref = tmp_path / "feed.jsonl"
    assert main(["feed", *sources, "--out", str(ref), "--quiet", *common]) == 0
    expected = read_jsonl(ref)
    assert all("parsed" in r for r in expected) and any(r["repeat"] for r in expected)
    out = tmp_path / "ray"
    res = _run(["feed", *sources, "--out", str(out), "--ray", cluster.address, "--actors", "1", *common])
    assert res.returncode == 0, res.stderr
    got = _results(out)
    key = lambda r: (r["source"], r["frame"])  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)


def test_parquet_records_keep_the_parsed_answer(tmp_path):
    import pyarrow.parquet as pq

    from edgecap.feeds.sources import FrameCaption
    from edgecap.ray.driver import _parquet_bytes

    answer = {"<OD>": {"bboxes": [[1, 2, 3, 4]], "labels": ["car"]}}
    records = [FrameCaption("s", 0, 0.0, "car", -1.0, False, 0.5, answer), FrameCaption("s", 1, 1.0, "x", -2.0, False, 0.4)]
    path = tmp_path / "r.parquet"
    path.write_bytes(_parquet_bytes(records, {"model": "m"}, {}))
    parsed = pq.read_table(path)["parsed"].to_pylist()
    assert [json.loads(p) if p else None for p in parsed] == [answer, None]
    plain = tmp_path / "plain.parquet"
    plain.write_bytes(_parquet_bytes(records[1:], {"model": "m"}, {}))
    assert "parsed" not in pq.read_table(plain).column_names  # bundles without a parser: as before
