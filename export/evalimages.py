"""Default evaluation images for the precision gate, when the user gives none (`--eval-images`).

Why not noise: on uniform noise a captioner's next-token choices are near-ties, so free-running
caption equality between two precisions measures which way the ties fall, not quantization error
(issue: the demo model's int8 agreed on 81 % of noise images but is within 0.2 pt of fp32 on 500
real scenes). These images have what real inputs have and noise lacks: flat regions, edges,
objects and lines of text (for OCR and document models), so the decoder is in the confident regime
real images put it in. They are still not the user's data: `--eval-images DIR` with a few dozen
real images is the way to a trustworthy figure, and export says so.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_WORDS = ("invoice total date cash 12.50 store item qty price change tax card receipt name address "
          "order 2024 road street ok yes no the of and to in is cat dog car red blue table").split()


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _scene(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A few filled shapes over a two-colour gradient."""
    t = np.linspace(0, 1, w)[None, :, None] * 0.5 + np.linspace(0, 1, h)[:, None, None] * 0.5
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=_colour(rng))
    return img


def _document(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Lines of dark words on a light page, at a text size that scales with the page."""
    img = Image.new("RGB", (w, h), _colour(rng, 215, 256))
    draw = ImageDraw.Draw(img)
    size = max(10, h // int(rng.integers(6, 14)))
    font = ImageFont.load_default(size=size)
    ink = _colour(rng, 0, 70)
    y = int(rng.integers(2, max(3, size)))
    while y + size < h:
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 6))))
        draw.text((int(rng.integers(2, max(3, w // 6))), y), line, fill=ink, font=font)
        y += int(size * rng.uniform(1.3, 2.0))
    return img


def synthetic_images(count: int, seed: int = 1, size: tuple[int, int] = (384, 384)) -> list[np.ndarray]:
    """`count` HxWx3 uint8 images, alternating scenes and text pages; `size` is (height, width)."""
    rng = np.random.default_rng(seed)
    h, w = size
    return [np.asarray((_scene if i % 2 == 0 else _document)(rng, w, h)) for i in range(count)]
