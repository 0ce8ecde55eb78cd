"""DESIGN.md section 9: a caption never depends on what else is in the batch, in any precision.

Bit-for-bit: tokens and scores of an image alone, in a batch of 8 and as beams beside other
images' beams are identical. ONNX Runtime's dynamic quantization (one activation scale per
tensor) broke this for int8: on these models it changed the score of all 8 images and the tokens
of half of them, so these tests fail on such graphs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgecap import Captioner

SHIPPED = ("fp32", "int8", "fp16", "int4", "int8-qdq")
# EDGECAP_INVARIANCE_BUNDLES=DIR[,DIR...]: run on bundles exported elsewhere, each with every SHIPPED
# precision, where there is no exporter (tests/platform/arm64.sh runs this file in an emulated ARM64
# root, which has no torch). Otherwise tiny models are exported here.
PREBUILT = [Path(p) for p in os.environ.get("EDGECAP_INVARIANCE_BUNDLES", "").split(",") if p]
PAIRS = [("vit", "gpt2"), ("deit", "trocr"), ("donut-swin", "mbart")]


@pytest.fixture(scope="module", params=PREBUILT or PAIRS, ids=lambda p: p.name if isinstance(p, Path) else "-".join(p))
def bundle(request, tmp_path_factory):
    if isinstance(request.param, Path):
        return request.param
    import tiny
    from edgecap_export.exporter import ExportOptions, export

    encoder, decoder = request.param
    root = tmp_path_factory.mktemp(f"inv-{encoder}-{decoder}")
    ckpt = tiny.build(root / "ckpt", encoder, decoder)
    return export(str(ckpt), root / "bundle", ExportOptions(precisions=SHIPPED, min_agreement=0.0))


@pytest.fixture(scope="module")
def images():
    """Eight images whose activations differ in scale: one dark, one saturated, the rest noise."""
    rng = np.random.default_rng(3)
    out = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(8)]
    out[2] = (out[2] // 10).astype(np.uint8)
    out[5] = np.where(out[5] > 128, 255, 0).astype(np.uint8)
    return out


def key(c):
    return (c.token_ids, c.score)


@pytest.mark.parametrize("precision", SHIPPED)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_caption_alone_equals_caption_in_a_batch(bundle, images, precision, num_beams):
    cap = Captioner(bundle, precision=precision)
    batch8 = cap.caption(images, num_beams=num_beams, batch_size=8)
    batch3 = cap.caption(images, num_beams=num_beams, batch_size=3)
    alone = [cap.caption([im], num_beams=num_beams)[0] for im in images]
    assert [key(c) for c in batch8] == [key(c) for c in alone]
    assert [key(c) for c in batch3] == [key(c) for c in alone]
    assert len({c.token_ids for c in alone}) > 1, "captions should depend on the image"


@pytest.mark.parametrize("precision", SHIPPED)
def test_a_beam_row_does_not_see_the_other_rows(bundle, images, precision):
    """Decoder-step level: 2 images x 3 beams fed different tokens; each row's logits equal those of
    the same row decoded alone (its image, one beam, the same tokens)."""
    cap = Captioner(bundle, precision=precision)
    encoded = cap.encode(cap.preprocess(images[:2]))
    steps, vocab = 4, cap.bundle.manifest.architecture.vocab_size
    tokens = np.random.default_rng(0).integers(3, vocab, size=(6, steps))
    with cap.step_decoder() as dec:
        dec.set_encoded(encoded)
        dec.begin(np.repeat(np.arange(2), 3), steps)
        together = [dec.step(tokens[:, t], t) for t in range(steps)]
        for row in range(6):
            dec.set_encoded({k: v[row // 3 : row // 3 + 1] for k, v in encoded.items()})
            dec.begin(np.arange(1), steps)
            for t in range(steps):
                alone = dec.step(tokens[row : row + 1, t], t)
                np.testing.assert_array_equal(alone[0], together[t][row], err_msg=f"row {row} step {t}")
