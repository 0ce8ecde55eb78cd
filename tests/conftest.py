from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory):
    """export_tiny(encoder, decoder, **build_kwargs) -> (checkpoint_dir, bundle_dir), cached per arguments."""
    import tiny
    from edgecap_export.exporter import ExportOptions, export

    cache: dict = {}

    def make(encoder: str = "vit", decoder: str = "gpt2", **kwargs):
        key = (encoder, decoder, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{encoder}-{decoder}")
            ckpt = tiny.build(root / "checkpoint", encoder, decoder, **kwargs)
            cache[key] = (ckpt, export(str(ckpt), root / "bundle", ExportOptions(precisions=("fp32",))))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def sample_images():
    """Three images of different sizes and content (HxWx3 uint8)."""
    rng = np.random.default_rng(7)
    out = []
    for h, w in ((40, 52), (64, 33), (31, 31)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
        out.append(np.clip(base + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def florence2(tmp_path_factory):
    """(checkpoint, bundle) of the tiny Florence-2 (tests/tiny_florence2.py), exported once with the
    default options (fp32 and int8, the quality gate on)."""
    import tiny_florence2
    from edgecap_export.exporter import export

    root = tmp_path_factory.mktemp("florence2")
    ckpt = tiny_florence2.build(root / "checkpoint")
    return ckpt, export(str(ckpt), root / "bundle")


@pytest.fixture(scope="session")
def florence2_attn(florence2, tmp_path_factory):
    """The same checkpoint exported fp32 with the attention-emitting decoder step."""
    from edgecap_export.exporter import ExportOptions, export

    ckpt, _ = florence2
    return export(str(ckpt), tmp_path_factory.mktemp("florence2-attn") / "bundle",
                  ExportOptions(precisions=("fp32",), with_attentions=True))
