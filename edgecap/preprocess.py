"""Image loading and preprocessing that reproduces Hugging Face's PIL ("slow") image processors.

The encoder was trained on pixels produced by ``ViTImageProcessor`` / ``DeiTImageProcessor``,
``CLIPImageProcessor`` (Florence-2's; the same resize-and-crop pipeline with CLIP's defaults) or
``DonutImageProcessor`` (``image_processing_pil_{vit,deit,clip,donut}`` in transformers 5.x), so any
difference here is silent accuracy loss.  Every step therefore mirrors the transformers code path
op for op: PIL resize on uint8 pixels, integer center-crop offsets (with zero padding when the
image is smaller than the crop), rescale computed in float64 then cast to float32, and normalize
computed in float32.  The result matches transformers to within 1e-6.

Donut and Nougat (``PreprocessSpec.kind`` ``"donut"``, ``"nougat"``) replace the resize with their
processors' page geometry (crop margin, align the long axis, shortest-edge resize, thumbnail, centered
pad): see :mod:`edgecap.docimage`, which also says where transformers 4.x and 5.x differ and how the
spec records what the exporting line did.

Deviations from transformers (deliberate, see :func:`to_rgb` and :func:`load_image`):

* 16/32-bit greyscale and float images (``I;16*``, ``I``, ``F``) are scaled to 8 bits instead of
  being clipped by ``PIL.Image.convert``.
* Images given as paths are EXIF-rotated (as ``transformers.image_utils.load_image`` and the
  pipelines do); PIL images and arrays are used as given (as the image processors do).
* Every image is converted to RGB.  transformers 5.x's Donut processor does so only when called
  with ``do_convert_rgb=True`` (without it, a greyscale image fails); 4.x's always did.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgecap.docimage import document_geometry, resize_hw
from edgecap.errors import ImageError

logger = logging.getLogger(__name__)

ImageSource = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]

IMAGENET_STANDARD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_SIDE = 1 << 15  # an encoder input side beyond this is a corrupt config, not a model
# Class-level defaults of the transformers processors, used for keys a config omits
# (transformers/models/{vit,deit}/image_processing_pil_*.py and BaseImageProcessor).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
            "do_center_crop": False, "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": IMAGENET_STANDARD, "image_std": IMAGENET_STANDARD},
    "deit": {"do_resize": True, "size": {"height": 256, "width": 256}, "resample": 3,
             "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
             "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_STANDARD,
             "image_std": IMAGENET_STANDARD},
    # transformers/models/donut/image_processing_pil_donut.py
    "donut": {"do_resize": True, "size": {"height": 2560, "width": 1920}, "resample": 2,
              "do_center_crop": False, "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "image_mean": IMAGENET_STANDARD, "image_std": IMAGENET_STANDARD,
              "do_align_long_axis": False, "do_thumbnail": True, "do_pad": True},
    # transformers/models/nougat/image_processing_pil_nougat.py (4.x: image_processing_nougat.py)
    "nougat": {"do_resize": True, "size": {"height": 896, "width": 672}, "resample": 2,
               "do_center_crop": False, "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
               "do_normalize": True, "image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD,
               "do_crop_margin": True, "do_align_long_axis": False, "do_thumbnail": True, "do_pad": True},
    # transformers/models/clip/image_processing_pil_clip.py (Florence-2's processor: its config sets
    # size 768x768, no crop, ImageNet mean/std); the resize-and-crop pipeline of "vit"
    "clip": {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": (0.48145466, 0.4578275, 0.40821073),
             "image_std": (0.26862954, 0.26130258, 0.27577711)},
}
_FAMILY = {
    f"{arch}{suffix}": family
    for arch, family in (("ViT", "vit"), ("DeiT", "deit"), ("Donut", "donut"), ("Nougat", "nougat"),
                                 ("CLIP", "clip"))
    for suffix in ("ImageProcessor", "ImageProcessorPil", "ImageProcessorFast", "FeatureExtractor")
}
# PreprocessSpec.kind: the ViT/DeiT resize-and-crop pipeline, or a document processor's page geometry
KINDS = ("vit", "donut", "nougat")
DOCUMENT_KINDS = ("donut", "nougat")
# Fields that only the document pipelines read; absent from bundles written before Donut support.
_DONUT_ONLY = ("do_align_long_axis", "do_thumbnail", "do_pad")
# Written only where they apply (Nougat's margin crop; a thumbnail filter other than transformers
# 5.x Donut's), so bundles written before them read back byte for byte.
_OPTIONAL = ("do_crop_margin", "thumbnail_resample", "thumbnail_reducing_gap")
# The thumbnail filter of Nougat's processor (both lines) and of Donut's on transformers 4.x
LEGACY_THUMBNAIL = (3, 2.0)  # PIL BICUBIC, reducing_gap=2.0
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def _size_dict(value: Any, name: str) -> dict[str, int] | None:
    """Normalise legacy size forms the way ``get_size_dict(default_to_square=True)`` does."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return {"height": int(value), "width": int(value)}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items() if v is not None}
    raise ValueError(f"{name} must be an int, a (height, width) pair or a dict, got {value!r}")


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {value!r}")
    return (values[0], values[1], values[2])


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn an RGB image into encoder input; mirrors the HF processor fields.

    ``kind`` picks the pipeline: ``"vit"`` (ViT and DeiT: resize, center crop), or ``"donut"`` /
    ``"nougat"`` (the page geometry of :mod:`edgecap.docimage`, then an optional center crop).
    The fields after ``image_std`` have defaults so that specs stored before them still load.
    ``thumbnail_resample`` / ``thumbnail_reducing_gap`` record the thumbnail's filter where it is not
    the configured ``resample`` (None: transformers 5.x Donut's rule).
    """

    do_resize: bool
    size: dict[str, int]
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int] | None
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    kind: str = "vit"
    do_align_long_axis: bool = False
    do_thumbnail: bool = False
    do_pad: bool = False
    do_crop_margin: bool = False
    thumbnail_resample: int | None = None
    thumbnail_reducing_gap: float | None = None

    def __post_init__(self) -> None:
        # Validate once here so that preprocess() never fails half-way through a batch.
        object.__setattr__(self, "size", _size_dict(self.size, "size"))
        object.__setattr__(self, "crop_size", _size_dict(self.crop_size, "crop_size"))
        object.__setattr__(self, "image_mean", _triple(self.image_mean, "image_mean"))
        object.__setattr__(self, "image_std", _triple(self.image_std, "image_std"))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if set(self.size) not in ({"height", "width"}, {"shortest_edge"}):
            raise ValueError(f"size must have keys height+width or shortest_edge, got {sorted(self.size)}")
        if any(v <= 0 for v in self.size.values()):
            raise ValueError(f"size values must be positive, got {self.size}")
        if self.kind in DOCUMENT_KINDS and "height" not in self.size:
            raise ValueError(f"{self.kind.capitalize()} preprocessing needs size with height and width, "
                             f"got {sorted(self.size)}")
        for name in _DONUT_ONLY + ("do_crop_margin",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        document_only = [name for name in _DONUT_ONLY + _OPTIONAL if getattr(self, name) not in (False, None)]
        if self.kind not in DOCUMENT_KINDS and document_only:
            raise ValueError(f"{', '.join(document_only)} need kind 'donut' or 'nougat', got kind {self.kind!r}")
        if self.do_crop_margin and self.kind != "nougat":
            raise ValueError(f"do_crop_margin needs kind 'nougat', got kind {self.kind!r}")
        if self.thumbnail_resample is not None and self.thumbnail_resample not in (0, 1, 2, 3, 4, 5):
            raise ValueError(f"thumbnail_resample must be a PIL resampling code 0..5, got {self.thumbnail_resample!r}")
        gap = self.thumbnail_reducing_gap
        if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float)) or gap < 1.0):
            raise ValueError(f"thumbnail_reducing_gap must be a number >= 1 or null, got {gap!r}")
        if self.do_center_crop:
            if self.crop_size is None or set(self.crop_size) != {"height", "width"}:
                raise ValueError(f"do_center_crop needs crop_size with height and width, got {self.crop_size}")
            if any(v <= 0 for v in self.crop_size.values()):
                raise ValueError(f"crop_size values must be positive, got {self.crop_size}")
        if self.resample not in (0, 1, 2, 3, 4, 5):
            raise ValueError(f"resample must be a PIL resampling code 0..5, got {self.resample!r}")
        if self.do_normalize and any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        numbers = {"rescale_factor": (self.rescale_factor,), "image_mean": self.image_mean, "image_std": self.image_std}
        for name, values in numbers.items():
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite, got {values if len(values) > 1 else values[0]!r}")
        if self.do_rescale and self.rescale_factor <= 0:
            raise ValueError(f"rescale_factor must be positive, got {self.rescale_factor}")
        for name, sizes in (("size", self.size), ("crop_size", self.crop_size or {})):
            if any(v > MAX_SIDE for v in sizes.values()):
                raise ValueError(f"{name} values must be at most {MAX_SIDE} pixels, got {sizes}")

    @property
    def output_hw(self) -> tuple[int, int]:
        """(H, W) of the encoder input, known only when it does not depend on the input image."""
        if self.do_center_crop and self.crop_size is not None:
            return (self.crop_size["height"], self.crop_size["width"])
        if self.kind in DOCUMENT_KINDS:
            if self.do_pad:
                return (self.size["height"], self.size["width"])
            raise ValueError(f"{self.kind.capitalize()} preprocessing without do_pad: output size depends "
                             "on the input image")
        if self.do_resize and "height" in self.size:
            return (self.size["height"], self.size["width"])
        if self.do_resize:
            raise ValueError("size is shortest_edge without center crop: output size depends on the input image")
        raise ValueError("no resize and no center crop: output size depends on the input image")

    @classmethod
    def from_hf_config(cls, cfg: dict, transformers_major: int | None = None) -> PreprocessSpec:
        """Build from a ``preprocessor_config.json`` dict, filling omitted keys with the HF class defaults.

        ``transformers_major``: the transformers line whose processor to reproduce where the lines
        differ (Donut's thumbnail filter: 4.x's BICUBIC with ``reducing_gap=2.0``); None means 5.x.
        """
        kind = cfg.get("image_processor_type") or cfg.get("feature_extractor_type")
        if kind is None:
            raise ValueError("preprocessor config has neither image_processor_type nor feature_extractor_type")
        family = _FAMILY.get(kind)
        if family is None:
            raise ValueError(
                f"unsupported image_processor_type {kind!r}; supported: {', '.join(sorted(_FAMILY))}"
            )
        values = dict(_DEFAULTS[family])
        for key in values:
            if cfg.get(key) is not None:  # HF treats an explicit null as "use the class default"
                values[key] = cfg[key]
        ignored = sorted(set(cfg) - set(values) - {"image_processor_type", "feature_extractor_type"})
        if ignored:
            logger.debug("preprocessor config keys not used by edgecap: %s", ", ".join(ignored))
        if family in DOCUMENT_KINDS:
            values["kind"] = family
            if isinstance(values["size"], (list, tuple)):
                # Donut's legacy feature-extractor size is (width, height), e.g. donut-base's [1920, 2560].
                values["size"] = list(values["size"])[::-1]
        if family == "nougat" or (family == "donut" and transformers_major is not None and transformers_major < 5):
            values["thumbnail_resample"], values["thumbnail_reducing_gap"] = LEGACY_THUMBNAIL
        values["resample"] = int(values["resample"])
        values["rescale_factor"] = float(values["rescale_factor"])
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists) that :meth:`from_dict` reads back.

        A ViT-kind spec is written without the document-only keys, exactly as before they existed,
        so older runtimes still read it; a Donut spec carries its keys (and the optional ones only
        where they apply), so older runtimes refuse what they would misread.
        """
        d = asdict(self)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        if self.kind == "vit":
            for name in ("kind",) + _DONUT_ONLY:
                del d[name]
        for name in _OPTIONAL:
            if d[name] in (False, None):
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        """Strict inverse of :meth:`to_dict`: a bundle written by another version must not be misread."""
        expected = {f.name for f in fields(cls)}
        optional = {"kind"} | set(_DONUT_ONLY) | set(_OPTIONAL)
        unknown, missing = sorted(set(d) - expected), sorted(expected - optional - set(d))
        if unknown or missing:
            problems = ([f"unknown keys: {', '.join(unknown)}"] if unknown else []) + (
                [f"missing keys: {', '.join(missing)}"] if missing else [])
            raise ValueError("invalid preprocess spec: " + "; ".join(problems))
        return cls(**d)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB exactly as transformers' ``convert_to_rgb`` does (5.x).

    Images with an alpha band (``RGBA``, ``LA``, ``PA``) or a ``transparency`` entry (palette or
    colour-key PNGs) are composited over white, other modes (``L``, ``P``, ``CMYK``, ``1``,
    ``YCbCr``...) go through ``Image.convert("RGB")``.  transformers 4.x used a plain
    ``convert("RGB")`` for everything, which differs only in transparent pixels.

    Deviation: ``convert`` clips high-bit-depth greyscale to 255, turning most 16-bit images white,
    so those are scaled instead: ``I;16*`` by 255/65535 (rounded), ``I`` the same when any value
    exceeds 255 (else used as is), ``F`` by 255 when all values lie in [0, 1] (else clipped).
    """
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float greyscale image to 8 bits (see :func:`to_rgb`)."""
    a = np.asarray(image)
    if image.mode == "F":
        a = a.astype(np.float64)
        scaled = a * 255.0 if a.size and a.min() >= 0.0 and a.max() <= 1.0 else a
        out = np.clip(np.round(scaled), 0, 255)
    else:
        a = a.astype(np.int64)
        if image.mode == "I" and (a.size == 0 or (a.min() >= 0 and a.max() <= 255)):
            out = a
        else:
            out = (np.clip(a, 0, 65535) + 128) // 257  # round(a * 255 / 65535)
    logger.debug("scaled %s image to 8-bit greyscale", image.mode)
    return Image.fromarray(np.ascontiguousarray(out, dtype=np.uint8))


def _bomb_problem(exc: BaseException) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = match.group(1) if match else "too many"
    return (f"image has {pixels} pixels, more than the limit of {Image.MAX_IMAGE_PIXELS} "
            "(PIL.Image.MAX_IMAGE_PIXELS); refusing a possible decompression bomb")


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (as transformers' ``load_image`` does); bad EXIF is not fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not reject a decodable image
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image.copy()


def _load_path(path: str | os.PathLike[str]) -> Image.Image:
    name = os.fspath(path)
    source = str(name)
    try:
        if os.path.getsize(name) == 0:
            raise ImageError(source, "file is empty (0 bytes)")
        with open(name, "rb") as fh, warnings.catch_warnings():
            # Image.open warns above MAX_IMAGE_PIXELS and raises above twice that; treat both as
            # errors: a caption service must not decode a possible decompression bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                im.load()  # force a full decode so truncated or corrupt data fails here, not later
                image = _exif_upright(im)
    except FileNotFoundError:
        raise ImageError(source, "file not found") from None
    except IsADirectoryError:
        raise ImageError(source, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(source, "permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(source, _bomb_problem(exc)) from None
    except UnidentifiedImageError:
        raise ImageError(source, "not an image (PIL cannot identify the file format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageError(source, f"truncated or corrupt image data ({exc})") from None
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    ok = array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)))
    if not ok or 0 in array.shape:
        raise ImageError("<array>", "expected HxWx3 uint8 (RGB), HxW uint8 (grey) or HxWx4 uint8 (RGBA), "
                                    f"got shape {array.shape} dtype {array.dtype}")
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    if array.shape[2] == 3:
        return Image.fromarray(array)
    # Composite over white with transformers' numpy arithmetic (not PIL's) so arrays match HF too.
    alpha = array[..., 3:4] / 255
    composite = alpha * array[..., :3] + (1 - alpha) * 255
    return Image.fromarray(np.round(composite).astype(np.uint8))


def load_image(source: ImageSource) -> Image.Image:
    """Return ``source`` as an RGB PIL image, raising :class:`ImageError` with a one-line reason.

    Paths are fully decoded here (so truncated files fail early, naming the file) and EXIF-rotated.
    """
    if isinstance(source, Image.Image):
        try:
            source.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(str(getattr(source, "filename", "") or "<image>"),
                             f"truncated or corrupt image data ({exc})") from None
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        return to_rgb(_load_path(source))
    raise TypeError(_type_problem(source))


def _center_crop(pixels: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center crop an HxWxC array, zero-padding like transformers when the image is smaller."""
    h, w = pixels.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= h and left + crop_w <= w:
        return pixels[top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w) + pixels.shape[2:], dtype=pixels.dtype)
    top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)  # ceil
    padded[top_pad:top_pad + h, left_pad:left_pad + w] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def _source_name(image: ImageSource) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, np.ndarray):
        return "<array>"
    return str(getattr(image, "filename", "") or "<image>")


def preprocess_one(image: ImageSource, spec: PreprocessSpec, min_side: int | None = None,
                   source: str | None = None) -> np.ndarray:
    """One image to a float32 ``[3, H, W]`` array, bit-compatible with the HF PIL processors.

    ``min_side`` (document kinds): warn, naming the image, when its content reaches the model
    thinner than this many pixels (the Captioner passes the encoder's patch size). ``source``: the
    name for messages (default: the path, or ``<image>``).
    """
    return _pixels(load_image(image), spec, source or _source_name(image), min_side)


def _pixels(rgb: Image.Image, spec: PreprocessSpec, source: str, min_side: int | None) -> np.ndarray:
    if spec.kind in DOCUMENT_KINDS:
        pixels = document_geometry(rgb, spec, source, min_side)
    else:
        if spec.do_resize:
            out_h, out_w = resize_hw(rgb.width, rgb.height, spec.size)
            rgb = rgb.resize((out_w, out_h), resample=spec.resample)
        pixels = np.asarray(rgb)  # H x W x 3 uint8
    if spec.do_center_crop and spec.crop_size is not None:
        pixels = _center_crop(pixels, spec.crop_size["height"], spec.crop_size["width"])
    # Same dtype sequence as transformers: rescale in float64 then cast, normalize in float32.
    if spec.do_rescale:
        pixels = (pixels.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    if spec.do_normalize:
        if not np.issubdtype(pixels.dtype, np.floating):
            pixels = pixels.astype(np.float32)
        mean = np.array(spec.image_mean, dtype=pixels.dtype)
        std = np.array(spec.image_std, dtype=pixels.dtype)
        pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


ACCEPTED = "a path (str or os.PathLike), a PIL.Image.Image or an HxWx3 uint8 numpy array"


def _type_problem(item: object) -> str:
    hint = ""
    if isinstance(item, (bytes, bytearray, memoryview)):
        hint = "; for encoded image bytes pass PIL.Image.open(io.BytesIO(data))"
    elif hasattr(item, "read"):
        hint = "; for an open file pass PIL.Image.open(file)"
    return f"images must be {ACCEPTED}, or a list of them; got {type(item).__name__}{hint}"


def image_list(images: object) -> list[ImageSource]:
    """One image or a sequence of them, as a list; TypeError naming the accepted types otherwise."""
    if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
        return [images]
    if images is None or isinstance(images, (bytes, bytearray, memoryview, dict)) or hasattr(images, "read") \
            or not hasattr(images, "__iter__"):
        raise TypeError(_type_problem(images))
    out = list(images)
    for item in out:
        if not isinstance(item, (str, os.PathLike, np.ndarray, Image.Image)):
            raise TypeError(_type_problem(item))
    return out


def preprocess(images: Sequence[ImageSource], spec: PreprocessSpec, min_side: int | None = None) -> np.ndarray:
    """A batch of images to a C-contiguous float32 ``[B, 3, H, W]`` array (``min_side``: see
    :func:`preprocess_one`)."""
    return preprocess_sized(images, spec, min_side)[0]


def preprocess_sized(images: Sequence[ImageSource], spec: PreprocessSpec,
                     min_side: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`preprocess`, and each image's (width, height) as loaded (after EXIF rotation): the size in
    which answers with locations (Florence-2's boxes) are given."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        raise TypeError("preprocess() takes a sequence of images; use preprocess_one() for a single image")
    if len(images) == 0:
        raise ValueError("preprocess() needs at least one image")
    arrays, sizes = [], []
    for image in images:
        rgb = load_image(image)
        sizes.append((rgb.width, rgb.height))
        arrays.append(_pixels(rgb, spec, _source_name(image), min_side))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images preprocess to different shapes {sorted(shapes)}; "
                         "enable resize to height/width, center crop or (Donut, Nougat) pad to batch them")
    return np.stack(arrays), sizes
