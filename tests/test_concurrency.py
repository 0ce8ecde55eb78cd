"""One Captioner shared by many threads (camera services do this): every call gets the caption it
would get alone. Before decoder states were per call, 8 threads x 20 calls gave 488-555 wrong
captions of 640 and some calls raised."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgecap import Captioner

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted(str(p) for p in (REPO / "models" / "demo" / "samples").glob("*.png"))


def _key(c):
    return (c.token_ids, c.score, tuple(a.token_ids for a in c.alternatives))


@pytest.fixture(scope="module")
def demo():
    return Captioner(backend="cpu", threads=1)


def test_threads_sharing_one_captioner_get_their_own_captions(demo):
    # each job: a different group of images and options, so the threads' decoder states differ in
    # rows, beams and cache length while they run side by side
    jobs = []
    for i in range(8 * 10):
        images = [SAMPLES[(i + k) % len(SAMPLES)] for k in range(1 + i % 4)]
        beams = (1, 3)[i % 2]
        jobs.append((images, dict(num_beams=beams, num_return_sequences=min(beams, 2), max_new_tokens=8 + i % 9)))
    expected = [[_key(c) for c in demo.caption(images, **kw)] for images, kw in jobs]
    start = threading.Barrier(8)

    def run(job_ids):
        start.wait()  # all threads start decoding together
        return [(j, [_key(c) for c in demo.caption(jobs[j][0], **jobs[j][1])]) for j in job_ids]

    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(run, [range(t, len(jobs), 8) for t in range(8)]) for r in part]
    wrong = [j for j, got in results if got != expected[j]]
    assert len(results) == len(jobs) and not wrong, f"{len(wrong)} of {len(jobs)} calls differ: {wrong[:5]}"
    assert demo._decoders.size > 1, "the calls never ran concurrently: this test would not catch a shared cache"


def test_states_are_reused_not_made_per_call(demo):
    """One thread calling repeatedly reuses one decoder state (no per-call allocation at batch 1)."""
    cap = Captioner(backend="cpu", threads=1)
    for _ in range(5):
        cap.caption(SAMPLES[0])
    assert cap._decoders.size == 1


def test_attention_maps_from_threads(demo):
    """Cross-attentions too: per call (layer and heads are per call, not set on a shared decoder)."""
    want = {layer: demo.caption(SAMPLES[0], output_attentions=True, attention_layer=layer)[0].cross_attentions
            for layer in (0, -1)}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda layer: (layer, demo.caption(SAMPLES[0], output_attentions=True,
                                                                attention_layer=layer)[0].cross_attentions),
                            [0, -1] * 6))
    for layer, att in got:
        np.testing.assert_array_equal(att, want[layer])
