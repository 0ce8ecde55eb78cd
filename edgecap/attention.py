"""Cross-attention maps: where the decoder looked in the image for each token it wrote.

`Captioner.caption(..., output_attentions=True)` gives, per token, the decoder's attention over
the encoder's tokens (`Caption.cross_attentions`). This module maps those rows onto the image
(`to_grid`) and draws them (`render_strip`, `AttentionMapWriter`): one panel per token, the image
under a heatmap, the token and its probability as the panel's title, the caption on top. Pillow
only: the colormap is viridis, interpolated from its published anchor colours.

Encoder tokens sit on the image as the bundle's architecture says: `encoder_prefix_tokens`
class/distillation tokens first (dropped here), then a rows x columns grid of patches, row-major
(Swin, Donut: the last stage's grid; Florence-2: DaViT's, after its mean-pooled token, with the
prompt's tokens after the grid, also dropped). The grid covers the model's input image; where Swin padded
an odd-sized input to whole windows the map is stretched over the image, off by under one cell.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import EdgecapError
from .fileio import safe_filename, write_atomic
from .manifest import Architecture
from .preprocess import ImageSource, PreprocessSpec, load_image

if TYPE_CHECKING:  # annotations only: the captioner imports nothing from here
    from .captioner import Caption, Captioner

log = logging.getLogger(__name__)

# matplotlib's viridis at 0, 1/8, ..., 1: perceptually uniform, readable in greyscale and by
# colour-blind readers, unlike jet's bands.
_VIRIDIS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 73, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (253, 231, 37),
], dtype=np.float32)
UNSURE = 0.5  # titles of tokens less likely than this are drawn in red, for a reviewer's eye


def to_grid(attentions: np.ndarray, arch: Architecture, size: tuple[int, int] | None = None) -> np.ndarray:
    """Attention over the encoder's tokens [..., S] -> maps on the patch grid [..., rows, cols].

    The class/distillation tokens are dropped (their attention is not anywhere in the image).
    With `size` (height, width), each map is upsampled bilinearly to that many pixels.
    """
    att = np.asarray(attentions, dtype=np.float32)
    if arch.encoder_grid is None or arch.encoder_prefix_tokens is None:
        raise EdgecapError("this bundle's manifest has no encoder_grid (exported before attention maps "
                           "existed); re-export it to map attentions onto the image")
    rows, cols = arch.encoder_grid
    prefix = arch.encoder_prefix_tokens
    image = prefix + rows * cols
    # an encoder that reads the prompt (Florence-2) has the prompt's tokens after the image's: dropped
    if att.shape[-1] != image and not (arch.encoder_prompt and att.shape[-1] > image):
        raise ValueError(f"attention over {att.shape[-1]} encoder tokens, but this encoder has {prefix} prefix "
                         f"tokens and a {rows}x{cols} grid ({image})")
    grid = att[..., prefix:image].reshape(*att.shape[:-1], rows, cols)
    if size is None:
        return grid
    h, w = size
    flat = grid.reshape(-1, rows, cols)
    up = [np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.Resampling.BILINEAR)) for m in flat]
    return np.stack(up).reshape(*grid.shape[:-2], h, w) if up else np.zeros((*grid.shape[:-2], h, w), np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB [..., 3], viridis."""
    x = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.minimum(x.astype(np.int64), len(_VIRIDIS) - 2)
    t = (x - lo)[..., None]
    return np.round(_VIRIDIS[lo] * (1 - t) + _VIRIDIS[lo + 1] * t).astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The image under a heatmap [H, W] of the image's size, scaled to its own maximum: the
    colour's opacity grows with the attention, so what the token ignored stays visible."""
    peak = float(heat.max()) if heat.size else 0.0
    m = heat / peak if peak > 0 else np.zeros_like(heat)
    alpha = (0.12 + 0.6 * m)[..., None]
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base * (1 - alpha) + colormap(m).astype(np.float32) * alpha
    return Image.fromarray(np.round(out).astype(np.uint8))


def model_view(pixel_values: np.ndarray, spec: PreprocessSpec) -> Image.Image:
    """The image as the encoder saw it (resized, cropped, padded), from one preprocessed
    [3, H, W] array: the pixels the attention maps lie on."""
    x = np.asarray(pixel_values, dtype=np.float32)
    if spec.do_normalize:
        x = x * np.asarray(spec.image_std, np.float32)[:, None, None] + np.asarray(spec.image_mean, np.float32)[:, None, None]
    if spec.do_rescale:
        x = x / spec.rescale_factor
    return Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """$EDGECAP_FONT (a .ttf/.ttc path: e.g. a CJK font for Japanese OCR), DejaVu Sans, or Pillow's own."""
    for name in (os.environ.get("EDGECAP_FONT"), "DejaVuSans.ttf"):
        if name:
            try:
                return ImageFont.truetype(name, size)
            except OSError:
                if name == os.environ.get("EDGECAP_FONT"):
                    log.warning("EDGECAP_FONT=%s: cannot load this font; using the default", name)
    return ImageFont.load_default(size)


def _panel_size(view: Image.Image, aspect: float | None) -> tuple[int, int]:
    """Display size of one panel: longest side 256, no side under 48 (a text line stays legible),
    at `aspect` (width / height) when given, else the view's."""
    aspect = aspect or view.width / view.height
    if aspect >= 1:
        w, h = 256, 256 / aspect
        if h < 48:
            w, h = min(48 * aspect, 960), 48
    else:
        w, h = 256 * aspect, 256
        if w < 48:
            w, h = 48, min(48 / aspect, 960)
    return max(1, round(w)), max(1, round(h))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def render_strip(
    view: Image.Image,
    maps: np.ndarray,
    labels: Sequence[str],
    probabilities: Sequence[float],
    caption: str,
    aspect: float | None = None,
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """One panel per token: `view` under its map (maps [tokens, H, W], the view's size), titled
    with its label and probability; the caption above. Returns the picture and each panel's
    image box (left, top, right, bottom), in token order. `aspect`: display the view at this
    width/height ratio (the original image's, where preprocessing only resized it)."""
    if len(maps) != len(labels) or len(labels) != len(probabilities):
        raise ValueError(f"{len(maps)} maps, {len(labels)} labels, {len(probabilities)} probabilities")
    pw, ph = _panel_size(view, aspect)
    font, big = _font(14), _font(16)
    pad, title_h = 8, 20
    cols = max(1, min(len(maps), 1280 // (pw + pad)))
    rows = max(1, math.ceil(len(maps) / cols))
    width = pad + cols * (pw + pad)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    head = _wrap(measure, caption, big, width - 2 * pad)
    head_h = pad + 22 * len(head)
    strip = Image.new("RGB", (width, head_h + rows * (title_h + ph + pad) + pad), "white")
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(head):
        draw.text((pad, pad + 22 * i), line, fill=(0, 0, 0), font=big)
    boxes = []
    for k, (heat, label, p) in enumerate(zip(maps, labels, probabilities)):
        x = pad + (k % cols) * (pw + pad)
        y = head_h + (k // cols) * (title_h + ph + pad)
        panel = overlay(view, heat).resize((pw, ph), Image.Resampling.BILINEAR)
        strip.paste(panel, (x, y + title_h))
        title = f"{label}  {p:.1%}"
        while len(title) > 1 and draw.textlength(title, font=font) > pw:
            title = title[:-2] + "…"
        draw.text((x, y + 2), title, fill=(200, 0, 0) if p < UNSURE else (0, 0, 0), font=font)
        boxes.append((x, y + title_h, x + pw, y + title_h + ph))
    return strip, boxes


def token_labels(captioner: "Captioner", token_ids: Sequence[int]) -> list[str]:
    """Each token as text on its own (special tokens by name, byte pieces as the tokenizer has them)."""
    tok = captioner.detokenize.tokenizer
    out = []
    for t in token_ids:
        text = tok.decode([int(t)], skip_special_tokens=False).strip()
        out.append(text or (tok.id_to_token(int(t)) or f"#{t}"))
    return out


def caption_strip(captioner: "Captioner", image: ImageSource, caption: "Caption") -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """`render_strip` for one image and its caption (from `caption(..., output_attentions=True)`)."""
    if caption.cross_attentions is None:
        raise ValueError("this caption has no cross_attentions: caption with output_attentions=True")
    att = caption.cross_attentions
    if att.ndim == 3:  # [tokens, heads, S]: a picture shows the heads' mean
        att = att.mean(axis=1)
    pixels = captioner.preprocess([image])[0]
    spec = captioner.preprocess_spec
    view = model_view(pixels, spec)
    maps = to_grid(att, captioner.bundle.manifest.architecture, size=(view.height, view.width))
    aspect = None
    if spec.kind == "vit" and not spec.do_center_crop:  # a plain resize: show the original's shape
        original = load_image(image)
        aspect = original.width / original.height
    probs = [math.exp(s) for s in caption.token_scores]
    title = f"{caption.text}   (confidence {caption.confidence:.1%})"
    return render_strip(view, maps, token_labels(captioner, caption.token_ids), probs, title, aspect)


class AttentionMapWriter:
    """`edgecap caption --attention-maps DIR`: one PNG per image, named after the input file
    (a second input with the same name gets -2, -3...)."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgecapError(f"{self.out_dir}: cannot create the attention map directory ({exc.strerror})") from None
        self._used: set[str] = set()

    def write(self, captioner: "Captioner", name: str, image: ImageSource, caption: "Caption") -> Path:
        stem = safe_filename(os.path.splitext(os.path.basename(name))[0], default="image")
        candidate, n = stem, 1
        while candidate in self._used:
            n += 1
            candidate = f"{stem}-{n}"
        self._used.add(candidate)
        path = self.out_dir / f"{candidate}.png"
        strip, _ = caption_strip(captioner, image, caption)
        png = io.BytesIO()
        strip.save(png, format="PNG")
        try:
            write_atomic(path, png.getvalue())  # a link planted at `path` is replaced, never followed
        except OSError as exc:
            raise EdgecapError(f"{path}: cannot write the attention map ({exc.strerror or exc})") from None
        return path
