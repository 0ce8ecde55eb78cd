"""The geometry of transformers' document image processors (Donut, Nougat), on PIL images.

``DonutImageProcessor`` and ``NougatImageProcessor`` (``image_processing_pil_{donut,nougat}.py`` in
transformers 5.x, ``image_processing_{donut,nougat}.py`` in 4.x) share one pipeline, which this
module reproduces op for op on uint8 pixels:

1. Nougat only: crop the margins (``crop_margin``: the greyscale page stretched to 0..255, pixels
   below 200 are content, crop to their bounding box; a page of one grey level is left as it is).
2. Align the long axis (a quarter turn clockwise when the page's orientation differs from ``size``'s).
3. Resize the shortest edge to ``min(size)`` with the configured ``resample``.
4. Thumbnail: shrink to fit ``size`` keeping the aspect ratio, with transformers' integer rounding.
   Which filter it uses is where the processors and lines differ, so the spec records it:
   Nougat (both lines) and Donut on 4.x resample BICUBIC with ``reducing_gap=2.0``; Donut on 5.x uses
   the configured ``resample`` (NEAREST becoming BICUBIC) without a reducing gap.
5. Pad with black to exactly ``size``, centered (inference's ``random_padding=False``).

Every step works on a PIL image (the processors round-trip through PIL for each one), so the
result is bit-identical, not merely close.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
from PIL import Image

from .errors import ImageError

logger = logging.getLogger(__name__)

# NougatImageProcessor.crop_margin's threshold: stretched grey levels below it are content
CROP_MARGIN_GREY = 200


class DocumentSpec(Protocol):
    """The fields of ``edgecap.preprocess.PreprocessSpec`` this module reads."""

    kind: str
    size: dict[str, int]
    resample: int
    do_resize: bool
    do_crop_margin: bool
    do_align_long_axis: bool
    do_thumbnail: bool
    do_pad: bool
    thumbnail_resample: int | None
    thumbnail_reducing_gap: float | None


def resize_hw(width: int, height: int, size: dict[str, int]) -> tuple[int, int]:
    """Target (H, W), as transformers' ``get_resize_output_image_size(default_to_square=False)``."""
    if "height" in size:
        return (size["height"], size["width"])
    edge = size["shortest_edge"]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = edge, int(edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def crop_margin(rgb: Image.Image) -> Image.Image:
    """Nougat's margin crop: the bounding box of the pixels whose stretched grey level is below 200.

    The same dtypes as transformers (uint8 grey from PIL's ``convert("L")``, then float64), so the
    same pixels count as content.
    """
    grey = np.asarray(rgb.convert("L"), dtype=np.uint8)
    lo, hi = grey.min(), grey.max()
    if lo == hi:  # one grey level: nothing to tell margin from content
        return rgb
    stretched = (grey - lo) / (hi - lo) * 255
    rows = np.flatnonzero((stretched < CROP_MARGIN_GREY).any(axis=1))
    cols = np.flatnonzero((stretched < CROP_MARGIN_GREY).any(axis=0))
    # never empty: the darkest pixel stretches to 0
    return rgb.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


def _thumbnail(rgb: Image.Image, spec: DocumentSpec, source: str, min_side: int | None) -> Image.Image:
    """Shrink to fit ``size`` keeping the aspect ratio, with transformers' integer rounding."""
    height, width = spec.size["height"], spec.size["width"]
    in_h, in_w = rgb.height, rgb.width
    out_h, out_w = min(in_h, height), min(in_w, width)
    if (out_h, out_w) == (in_h, in_w):
        _warn_thin(in_w, in_h, source, min_side)
        return rgb
    if in_h > in_w:
        out_w = int(in_w * out_h / in_h)
    elif in_w > in_h:
        out_h = int(in_h * out_w / in_w)
    if out_h == 0 or out_w == 0:  # transformers fails here too (PIL refuses a 0-pixel resize)
        raise ImageError(source, f"too elongated for {_name(spec)}'s {width}x{height} input: shrinking it "
                                 f"({in_w}x{in_h} after resizing) to fit gives {out_w}x{out_h} pixels")
    _warn_thin(out_w, out_h, source, min_side)
    if spec.thumbnail_resample is not None:
        resample = spec.thumbnail_resample
    else:  # transformers 5.x's Donut passes `resample or BICUBIC`: NEAREST (0) becomes BICUBIC
        resample = spec.resample or Image.Resampling.BICUBIC
    return rgb.resize((out_w, out_h), resample=resample, reducing_gap=spec.thumbnail_reducing_gap)


def _warn_thin(width: int, height: int, source: str, min_side: int | None) -> None:
    if min_side is not None and min(width, height) < min_side:
        logger.warning("%s: reaches the model as %dx%d pixels of content, thinner than one %d-pixel patch; "
                       "its caption is unlikely to mean much (crop or split the image first)",
                       source, width, height, min_side)


def _name(spec: DocumentSpec) -> str:
    return spec.kind.capitalize()  # "Donut", "Nougat": the processor the user knows


def _pad(pixels: np.ndarray, spec: DocumentSpec, source: str) -> np.ndarray:
    """Zero-pad an HxWxC array to (height, width), centered (the processors' inference padding)."""
    height, width = spec.size["height"], spec.size["width"]
    h, w = pixels.shape[:2]
    delta_h, delta_w = height - h, width - w
    if delta_h < 0 or delta_w < 0:
        raise ImageError(source, f"is {w}x{h} after resizing, larger than {_name(spec)}'s {width}x{height} input "
                                 "(the preprocessor config has do_thumbnail off)")
    top, left = delta_h // 2, delta_w // 2
    padded = np.zeros((height, width) + pixels.shape[2:], dtype=pixels.dtype)
    padded[top:top + h, left:left + w] = pixels
    return padded


def document_geometry(rgb: Image.Image, spec: DocumentSpec, source: str, min_side: int | None = None) -> np.ndarray:
    """Crop margin / align / resize / thumbnail / pad, as uint8 HxWx3.

    ``min_side``: warn (naming ``source``) when the image's content reaches the model thinner than
    this many pixels, e.g. the encoder's patch size: a 20,000x200 strip becomes a sliver of a page.
    """
    height, width = spec.size["height"], spec.size["width"]
    if spec.do_crop_margin:
        rgb = crop_margin(rgb)
    if spec.do_align_long_axis and ((width < height and rgb.width > rgb.height)
                                    or (width > height and rgb.width < rgb.height)):
        # transformers' np.rot90(k=3) over (H, W): a quarter turn clockwise, pixel-exact in PIL.
        rgb = rgb.transpose(Image.Transpose.ROTATE_270)
    if spec.do_resize:
        out_h, out_w = resize_hw(rgb.width, rgb.height, {"shortest_edge": min(height, width)})
        rgb = rgb.resize((out_w, out_h), resample=spec.resample)
    if spec.do_thumbnail:
        rgb = _thumbnail(rgb, spec, source, min_side)
    else:
        _warn_thin(rgb.width, rgb.height, source, min_side)
    pixels: np.ndarray = np.asarray(rgb)
    return _pad(pixels, spec, source) if spec.do_pad else pixels
