"""Document images the tests render themselves: text pages, a nearly blank page, skewed photos of a
page, thin strips, and PDFs of pages (PIL's PDF writer; pypdfium2 renders them back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WORDS = "the model reads pages of text equations tables and figures from scanned papers".split()


def text_page(width: int = 340, height: int = 440, seed: int = 0, margin: int = 30) -> Image.Image:
    """A white page with lines of 'text' (PIL's default font), a heading and a table rule."""
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    y = margin
    draw.text((margin, y), "1 Introduction", fill=(0, 0, 0))
    y += 20
    while y < height - margin - 12:
        words = rng.choice(WORDS, size=int(rng.integers(3, 9)))
        draw.text((margin + int(rng.integers(0, 8)), y), " ".join(words), fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
        y += int(rng.integers(11, 16))
    draw.line((margin, height // 2, width - margin - int(rng.integers(0, 40)), height // 2), fill=(40, 40, 40))
    return page


def nearly_blank_page(width: int = 300, height: int = 400) -> Image.Image:
    """White with a faint smudge and one dark speck: the margin crop keeps little of it."""
    a = np.full((height, width, 3), 255, dtype=np.uint8)
    a[50:60, 200:230] = 246
    a[310, 77] = (30, 30, 30)
    return Image.fromarray(a)


def skewed_photo(seed: int = 1, width: int = 260, height: int = 200) -> Image.Image:
    """A page photographed at an angle on a grey desk, with sensor noise (landscape)."""
    rng = np.random.default_rng(seed)
    page = text_page(150, 190, seed=seed, margin=12).rotate(float(rng.uniform(-12, 12)), expand=True, fillcolor=(120, 118, 110))
    desk = Image.new("RGB", (width, height), (120, 118, 110))
    desk.paste(page, (int(rng.integers(0, max(1, width - page.width))), int(rng.integers(0, max(1, height - page.height)))))
    a = np.asarray(desk).astype(np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def thin_strip(length: int = 2000, thickness: int = 20, horizontal: bool = True) -> Image.Image:
    """A long strip of text-like marks: after resizing, thinner than a patch."""
    a = np.full((thickness, length, 3), 255, dtype=np.uint8)
    a[thickness // 3: 2 * thickness // 3, 5:-5:7] = 0
    image = Image.fromarray(a)
    return image if horizontal else image.transpose(Image.Transpose.ROTATE_90)


def write_pdf(path: Path, pages: list[Image.Image], resolution: float = 96.0) -> Path:
    """A PDF whose pages are these images (at `resolution` dpi, so rendering at it gives their size)."""
    first, *rest = [p.convert("RGB") for p in pages]
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=resolution)
    return path
