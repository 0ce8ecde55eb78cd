"""Optimization-profile shapes from a bundle's manifest: one profile per graph, min/opt/max per input.

The manifest names two symbolic dimensions (export/graphs.py): "batch" (images for the encoder,
images x beams for the decoder step) and "cache_len" (the fixed self-attention cache length, = the
caption's max_new_tokens). Everything else is fixed. A caption never changes either dimension while
it grows, so one engine serves it from the first token to the last; explicit ranges also keep ONNX
Runtime's TensorRT EP from rebuilding engines when a new batch size shows up (onnxruntime #13559,
#16889: without explicit profiles the EP builds for the shapes it has seen and rebuilds on new ones).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import manifest as mf
from ..errors import BundleError

BATCH, CACHE_LEN = "batch", "cache_len"
# The decoder's cross K/V inputs: one row per image on the CPU path (beams share it in-graph); the
# GPU backends expand them to one per decoder row on the device, so their range is the rows' range.
IMAGES = "images"
DEFAULT_MAX_BATCH = 8  # Captioner.caption's default batch_size
MIN_MAX_BEAMS = 4
MIN_MAX_NEW_TOKENS = 64

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


@dataclass(frozen=True)
class ProfileLimits:
    """What an engine must accept: up to max_batch images x max_beams beams x max_new_tokens tokens."""

    max_batch: int
    max_beams: int
    max_new_tokens: int
    opt_batch: int
    opt_beams: int
    opt_new_tokens: int

    def __post_init__(self) -> None:
        for kind in ("batch", "beams", "new_tokens"):
            lo, hi = getattr(self, f"opt_{kind}"), getattr(self, f"max_{kind}")
            if hi < 1:
                raise ValueError(f"max_{kind} must be >= 1, got {hi}")
            if not 1 <= lo <= hi:
                raise ValueError(f"opt_{kind} must be between 1 and max_{kind} ({hi}), got {lo}")

    @property
    def max_rows(self) -> int:
        """Decoder batch: images x beams."""
        return self.max_batch * self.max_beams

    @property
    def opt_rows(self) -> int:
        return self.opt_batch * self.opt_beams

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> "ProfileLimits":
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})


def default_limits(
    manifest: mf.Manifest,
    max_batch: int | None = None,
    max_beams: int | None = None,
    max_new_tokens: int | None = None,
) -> ProfileLimits:
    """Limits covering the bundle's generation defaults with headroom; explicit values win.

    opt (what TensorRT tunes kernels for) is a full batch of the bundle's default beams and caption
    length, clipped to the maxima.
    """
    gen = manifest.generation
    mb = max_batch or DEFAULT_MAX_BATCH
    beams = max_beams or max(MIN_MAX_BEAMS, gen.num_beams)
    if max_new_tokens is None:
        # the position table bounds a caption; headroom beyond the default for longer captions
        cap = max(1, manifest.architecture.max_positions - 1)
        max_new_tokens = max(gen.max_new_tokens, min(MIN_MAX_NEW_TOKENS, cap))
    return ProfileLimits(
        max_batch=mb,
        max_beams=beams,
        max_new_tokens=max_new_tokens,
        opt_batch=mb,
        opt_beams=max(1, min(gen.num_beams, beams)),
        opt_new_tokens=max(1, min(gen.max_new_tokens, max_new_tokens)),
    )


def graph_profile(graph: mf.GraphSpec, role: str, limits: ProfileLimits) -> Profile:
    """min/opt/max shapes of every input of `graph` that has a symbolic dimension.

    role "encoder": batch = images; role "decoder": batch = images x beams, plus cache_len.
    """
    if role == "encoder":
        ranges = {BATCH: (1, limits.opt_batch, limits.max_batch)}
    elif role == "decoder":
        ranges = {
            BATCH: (1, limits.opt_rows, limits.max_rows),
            IMAGES: (1, limits.opt_rows, limits.max_rows),
            CACHE_LEN: (1, limits.opt_new_tokens, limits.max_new_tokens),
        }
    else:
        raise ValueError(f"role must be 'encoder' or 'decoder', got {role!r}")
    profile: Profile = {}
    for spec in graph.inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue  # fixed shape (e.g. `step` [1]): TensorRT needs no profile entry
        shapes: list[list[int]] = [[], [], []]
        for d in spec.shape:
            if isinstance(d, int):
                lo = opt = hi = d
            elif d in ranges:
                lo, opt, hi = ranges[d]
            else:
                raise BundleError(
                    f"{graph.file}: input {spec.name} has symbolic dimension {d!r}; "
                    f"edgecap builds profiles for {', '.join(sorted(ranges))} only"
                )
            for s, v in zip(shapes, (lo, opt, hi)):
                s.append(v)
        profile[spec.name] = (tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]))
    return profile


def bundle_profiles(pair: mf.GraphPair, limits: ProfileLimits) -> dict[str, Profile]:
    return {"encoder": graph_profile(pair.encoder, "encoder", limits), "decoder": graph_profile(pair.decoder, "decoder", limits)}


def _shape_str(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def ort_trt_profile_options(profile: Profile) -> dict[str, str]:
    """ONNX Runtime TensorRT EP options: "name:d0xd1x...,name2:..." for min, opt and max."""
    out = {}
    for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
        out[key] = ",".join(f"{name}:{_shape_str(shapes[i])}" for name, shapes in profile.items())
    return out


def profile_to_json(profile: Profile) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in shapes] for name, shapes in profile.items()}


def profile_from_json(data: dict[str, list[list[int]]]) -> Profile:
    return {name: tuple(tuple(int(d) for d in s) for s in shapes) for name, shapes in data.items()}  # type: ignore[misc]
