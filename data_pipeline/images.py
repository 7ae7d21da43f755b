"""Drawing the synthetic images: one large cue shape among small noisy distractors (PIL).

Each cue is a (shape, colour) the image alone carries: a tiny random vision tower can tell
them apart at 32x32. Distractors are at most ~1/8 of the side, cues about half of it, so a
distractor is never mistaken for a cue.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Distractor colours stay away from the cue colours (no pure reds, greens, blues, yellows...).
_DISTRACTOR_COLOURS = [
    (128, 128, 128),
    (150, 110, 80),
    (90, 120, 130),
    (170, 160, 150),
    (110, 100, 140),
]


@dataclass(frozen=True)
class Cue:
    """A visual cue: its name, the harm (or benign) category it stands for, and its drawing."""

    name: str
    category: str
    harmful: bool
    shape: str
    colour: tuple[int, int, int]


HARMFUL_CUES = (
    Cue("red_triangle", "weapons", True, "triangle", (220, 30, 30)),
    Cue("black_x", "drugs", True, "x", (15, 15, 15)),
    Cue("orange_blob", "self_harm", True, "blob", (245, 140, 20)),
)
BENIGN_CUES = (
    Cue("green_circle", "nature", False, "circle", (40, 180, 60)),
    Cue("blue_square", "household", False, "square", (40, 70, 220)),
    Cue("yellow_star", "celebration", False, "star", (240, 220, 30)),
)
CUES = {c.name: c for c in HARMFUL_CUES + BENIGN_CUES}


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rr = r if i % 2 == 0 else r * 0.45
        a = rot + i * math.pi / 5
        pts.append((cx + rr * math.sin(a), cy - rr * math.cos(a)))
    return pts


def _blob(cx: float, cy: float, r: float, rng: random.Random) -> list[tuple[float, float]]:
    pts = []
    for i in range(12):
        a = i * 2 * math.pi / 12
        rr = r * rng.uniform(0.7, 1.0)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_cue(
    draw: ImageDraw.ImageDraw, cue: Cue, cx: float, cy: float, r: float, rng: random.Random
) -> None:
    c = cue.colour
    if cue.shape == "triangle":
        rot = rng.uniform(-0.3, 0.3)
        pts = [
            (
                cx + r * math.sin(rot + k * 2 * math.pi / 3),
                cy - r * math.cos(rot + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
        draw.polygon(pts, fill=c)
    elif cue.shape == "x":
        w = max(2, round(r / 2.5))
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=c, width=w)
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=c, width=w)
    elif cue.shape == "blob":
        draw.polygon(_blob(cx, cy, r, rng), fill=c)
    elif cue.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
    elif cue.shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=c)
    elif cue.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.1, rng.uniform(-0.3, 0.3)), fill=c)
    else:  # pragma: no cover - the cue table is fixed
        raise ValueError(cue.shape)


def background(size: int, rng: random.Random) -> Image.Image:
    """A light noisy background with a few small distractors (no cue)."""
    base = rng.randint(200, 240)
    noise = np.random.default_rng(rng.getrandbits(64))
    grey = base + noise.integers(-18, 19, size=(size, size, 1))
    tint = noise.integers(-6, 7, size=(size, size, 1))
    arr = np.concatenate([grey, grey, grey + tint], axis=2).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    dmax = max(2, size // 8)
    for _ in range(rng.randint(2, 4)):
        d = rng.randint(1, dmax)
        x, y = rng.randint(0, size - d), rng.randint(0, size - d)
        draw.rectangle([x, y, x + d - 1, y + d - 1], fill=rng.choice(_DISTRACTOR_COLOURS))
    return img


def scene(cue: Cue, size: int, layout_seed: str) -> Image.Image:
    """The image of `cue`; the same `layout_seed` gives the same background and placement, so a
    harmful image and its benign twin differ only in the cue."""
    rng = random.Random(f"layout-{layout_seed}")
    img = background(size, rng)
    r = size * rng.uniform(0.22, 0.3)
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    draw_cue(ImageDraw.Draw(img), cue, cx, cy, r, random.Random(f"cue-{layout_seed}-{cue.name}"))
    return img
