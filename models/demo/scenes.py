"""Synthetic scene world for the bundled demo captioner.

A scene holds 1-3 flat objects drawn with Pillow on a light background (solid colour or a
linear gradient) with mild Gaussian pixel noise. Every object has

* a shape:  circle, square, triangle, star, diamond
* a colour: red, orange, yellow, green, blue, purple, pink, black  (this list is the
  *palette order*; the colours of the objects in one scene are always distinct)
* a size:   small or large
* a position (centre, as fractions of the image side).

Scenes with 2 or 3 objects carry one spatial relation between the *subject* and every other
object: ``left`` / ``right`` / ``above`` / ``below``.

Caption grammar (one canonical caption per scene, a pure function of the scene)::

    caption  := NP                        (1 object)
              | NP REL NP                 (2 objects)
              | NP REL NP "and" NP        (3 objects)
    NP       := "a" SIZE COLOUR SHAPE
    SIZE     := "small" | "large"
    REL      := "to the left of" | "to the right of" | "above" | "below"

Objects are always mentioned in palette order of their colours, so the caption is determined
by what is visible in the image: the subject (first NP) is the object whose colour comes first
in the palette, and the remaining objects follow in palette order. The subject stands in REL
to *every* other object, e.g.

    "a large green star"
    "a small red circle to the left of a large blue square"
    "a small orange diamond below a large yellow triangle and a small black circle"

Geometry makes the relation clearly true: for "to the left of" the subject's bounding box ends
at least ``GAP`` (fraction of the side) before each other object's box begins, and the
vertical offset of the centres is at most half the horizontal one (so the relation could not
be read as "above"/"below"); the other relations are the same rule rotated. Objects never
overlap.

CLI::

    python models/demo/scenes.py --seed S --count N --out DIR [--size PX]

writes ``DIR/scene_00000.png`` ... and ``DIR/captions.jsonl`` with lines
``{"file": "scene_00000.png", "caption": "..."}``. The same seed gives byte-identical output.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond")
# Palette order matters: it fixes the order in which objects are mentioned.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (250, 135, 0),
    "yellow": (235, 210, 10),
    "green": (25, 150, 40),
    "blue": (25, 60, 215),
    "purple": (130, 35, 175),
    "pink": (250, 110, 190),
    "black": (20, 20, 20),
}
PALETTE = tuple(COLOURS)
SIZES = {"small": 0.16, "large": 0.28}  # side of the object's bounding box / image side
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}

MARGIN = 0.03  # objects keep this far from the border
GAP = 0.06  # minimum gap between the boxes of related objects along the relation axis
SEP = 0.04  # minimum gap between any two objects (in x or in y)
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down (anti-aliasing)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of the image width
    y: float  # centre, fraction of the image height
    rgb: tuple[int, int, int]  # the drawn colour (palette colour with a small jitter)

    @property
    def side(self) -> float:
        return SIZES[self.size]

    def box(self) -> tuple[float, float, float, float]:
        h = self.side / 2
        return (self.x - h, self.y - h, self.x + h, self.y + h)


@dataclass(frozen=True)
class Background:
    kind: str  # "solid" or "gradient"
    colour1: tuple[int, int, int]
    colour2: tuple[int, int, int]  # == colour1 for solid
    angle: float  # gradient direction in radians
    noise_sigma: float
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # in palette order; objects[0] is the subject
    relation: str | None  # "left" | "right" | "above" | "below" (subject vs each other object)
    background: Background = field(repr=False)


# --------------------------------------------------------------------------------------------
# Scene sampling


def _light_colour(rng: random.Random) -> tuple[int, int, int]:
    base = rng.randint(165, 235)
    return tuple(min(255, max(0, base + rng.randint(-22, 22))) for _ in range(3))  # type: ignore[return-value]


def relation_holds(subject: SceneObject, other: SceneObject, relation: str) -> bool:
    """True when ``subject <relation> other`` is clearly the case (see module docstring)."""
    sx0, sy0, sx1, sy1 = subject.box()
    ox0, oy0, ox1, oy1 = other.box()
    dx, dy = other.x - subject.x, other.y - subject.y
    if relation == "left":
        return sx1 + GAP <= ox0 and abs(dy) <= 0.5 * dx
    if relation == "right":
        return ox1 + GAP <= sx0 and abs(dy) <= 0.5 * -dx
    if relation == "above":  # image y grows downwards
        return sy1 + GAP <= oy0 and abs(dx) <= 0.5 * dy
    if relation == "below":
        return oy1 + GAP <= sy0 and abs(dx) <= 0.5 * -dy
    raise ValueError(f"unknown relation {relation!r}")


def _separated(a: SceneObject, b: SceneObject) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + SEP <= bx0 or bx1 + SEP <= ax0 or ay1 + SEP <= by0 or by1 + SEP <= ay0


def make_scene(rng: random.Random) -> Scene:
    """Sample one scene from ``rng`` (a ``random.Random``); deterministic for its state."""
    n = rng.choice((1, 2, 3))
    while True:
        colours = sorted(rng.sample(PALETTE, n), key=PALETTE.index)
        attrs = [(rng.choice(SHAPES), c, rng.choice(tuple(SIZES))) for c in colours]
        relation = rng.choice(tuple(RELATIONS)) if n > 1 else None
        for _ in range(300):
            objs = []
            for shape, colour, size in attrs:
                lo, hi = MARGIN + SIZES[size] / 2, 1 - MARGIN - SIZES[size] / 2
                objs.append((shape, colour, size, rng.uniform(lo, hi), rng.uniform(lo, hi)))
            placed = [
                SceneObject(s, c, z, x, y, (0, 0, 0)) for s, c, z, x, y in objs
            ]
            if relation is not None and not all(
                relation_holds(placed[0], o, relation) for o in placed[1:]
            ):
                continue
            if not all(
                _separated(placed[i], placed[j]) for i in range(n) for j in range(i + 1, n)
            ):
                continue
            break
        else:  # composition too crowded for this relation: draw a new one
            continue
        final = tuple(
            SceneObject(
                o.shape, o.colour, o.size, round(o.x, 4), round(o.y, 4),
                tuple(min(255, max(0, v + rng.randint(-12, 12))) for v in COLOURS[o.colour]),  # type: ignore[misc]
            )
            for o in placed
        )
        if relation is not None and not all(relation_holds(final[0], o, relation) for o in final[1:]):
            continue  # rounding broke a boundary case
        c1 = _light_colour(rng)
        gradient = rng.random() < 0.5
        c2 = _light_colour(rng) if gradient else c1
        background = Background(
            kind="gradient" if gradient else "solid",
            colour1=c1,
            colour2=c2,
            angle=rng.uniform(0, 2 * np.pi) if gradient else 0.0,
            noise_sigma=round(rng.uniform(2.0, 7.0), 2),
            noise_seed=rng.getrandbits(32),
        )
        return Scene(objects=final, relation=relation, background=background)


# --------------------------------------------------------------------------------------------
# Rendering and captions


def _shape_points(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "diamond":
        return [(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = half if k % 2 == 0 else half * 0.45
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + r * np.cos(a), cy + half * 0.1 + r * np.sin(a)))
        return pts
    raise ValueError(shape)


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image (deterministic)."""
    bg = scene.background
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (xx - 0.5) * np.cos(bg.angle) + (yy - 0.5) * np.sin(bg.angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1 = np.asarray(bg.colour1, np.float32)
    c2 = np.asarray(bg.colour2, np.float32)
    base = c1 + t[..., None] * (c2 - c1)
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(np.round(base).astype(np.uint8), "RGB").resize((big, big), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        cx, cy, half = o.x * big, o.y * big, o.side * big / 2
        if o.shape == "circle":
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=o.rgb)
        else:
            draw.polygon(_shape_points(o.shape, cx, cy, half), fill=o.rgb)
    img = np.asarray(canvas.reduce(SUPERSAMPLE), np.float32)
    noise = np.random.default_rng(bg.noise_seed).normal(0.0, bg.noise_sigma, img.shape)
    return Image.fromarray(np.clip(np.round(img + noise), 0, 255).astype(np.uint8), "RGB")


def noun_phrase(o: SceneObject) -> str:
    return f"a {o.size} {o.colour} {o.shape}"


def caption(scene: Scene) -> str:
    """The canonical caption of ``scene`` (see the grammar in the module docstring)."""
    nps = [noun_phrase(o) for o in scene.objects]
    if len(nps) == 1:
        return nps[0]
    rel = RELATIONS[scene.relation]  # type: ignore[index]
    return f"{nps[0]} {rel} " + " and ".join(nps[1:])


def generate_scenes(seed: int, count: int) -> list[Scene]:
    rng = random.Random(seed)
    return [make_scene(rng) for _ in range(count)]


def generate(seed: int, count: int, size: int = 128) -> list[tuple[Image.Image, str]]:
    """``count`` (image, caption) pairs, deterministic for ``seed``."""
    return [(render(s, size), caption(s)) for s in generate_scenes(seed, count)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (img, cap) in enumerate(generate(args.seed, args.count, args.size)):
        name = f"scene_{i:05d}.png"
        img.save(args.out / name, format="PNG")
        lines.append(json.dumps({"file": name, "caption": cap}) + "\n")
    (args.out / "captions.jsonl").write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
