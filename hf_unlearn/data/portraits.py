"""Procedural portraits (and shape pictures) for the synthetic benchmark, drawn with PIL only.

A portrait is a cartoon face whose look is fixed by a person's `PortraitTraits`. The large regions (background, shirt,
hair) carry strong, saturated colours so that a tiny vision tower with 8x8 patches on a 32x32 image can tell a few
dozen people apart; `sample_traits` makes every pair of people differ in at least two of those large regions whenever
the palette allows it. `transform_portrait` makes the "test" view of a person: shifted, re-lit, colour-jittered and
noisy, yet still closer to its own original than to anyone else's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Large-region palettes: saturated and far apart in RGB, because the regions are what a tiny CLIP sees.
STRONG_COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "magenta": (210, 40, 190),
    "cyan": (30, 200, 210),
    "orange": (245, 130, 20),
    "purple": (110, 40, 170),
}
HAIR_COLORS: dict[str, RGB] = {
    "black": (25, 25, 25),
    "brown": (110, 65, 25),
    "blonde": (235, 205, 110),
    "ginger": (200, 85, 25),
    "white": (240, 240, 240),
    "blue": (40, 90, 230),
    "green": (40, 180, 80),
    "pink": (240, 120, 190),
}
SKIN_TONES: dict[str, RGB] = {
    "pale": (250, 222, 200),
    "light": (232, 190, 150),
    "tan": (200, 150, 105),
    "brown": (150, 100, 65),
    "dark": (95, 60, 40),
}
EYE_COLORS: dict[str, RGB] = {
    "brown": (90, 50, 20),
    "blue": (40, 110, 220),
    "green": (40, 150, 60),
    "grey": (120, 120, 130),
}
HAIR_STYLES = ("short", "long", "spiky", "bun")
ACCESSORIES = ("none", "glasses", "hat", "bowtie", "earrings", "headband")

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
SHAPE_COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (130, 40, 190),
    "orange": (245, 130, 20),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}

_SUPERSAMPLE = 4  # draw 4x larger, then box-downsample: smooth edges at 32x32 without antialiasing support in PIL
_MOUTH = (150, 30, 40)
_ACCESSORY_DARK = (20, 20, 20)
_ACCESSORY_LIGHT = (250, 250, 250)
_GOLD = (250, 200, 0)


@dataclass(frozen=True)
class PortraitTraits:
    """The visual identity of one person. Every field is a key of the matching palette above."""

    background: str
    skin: str
    hair_color: str
    hair_style: str
    eye_color: str
    shirt: str
    accessory: str

    def large_regions(self) -> tuple[str, str, str]:
        """The traits painted over large areas: the ones a coarse-patch vision tower relies on."""
        return (self.background, self.shirt, self.hair_color)


_TRAIT_CHOICES: tuple[tuple[str, ...], ...] = (
    tuple(STRONG_COLORS),  # background
    tuple(SKIN_TONES),
    tuple(HAIR_COLORS),
    HAIR_STYLES,
    tuple(EYE_COLORS),
    tuple(STRONG_COLORS),  # shirt
    ACCESSORIES,
)
_LARGE_REGION_COLUMNS = [0, 5, 2]  # background, shirt, hair colour


def _random_trait_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random trait sets as integer codes, shape (n, 7); the shirt never takes the background colour."""
    codes = np.stack([rng.integers(len(choices), size=n) for choices in _TRAIT_CHOICES], axis=1)  # (n, 7)
    num_strong = len(STRONG_COLORS)
    codes[:, 5] = (codes[:, 0] + 1 + rng.integers(num_strong - 1, size=n)) % num_strong  # shirt != background
    return codes


def sample_traits(num_people: int, rng: np.random.Generator, *, candidates: int = 256) -> list[PortraitTraits]:
    """Draw ``num_people`` distinct trait sets, greedily keeping people visually far apart.

    For each new person, ``candidates`` random trait sets are drawn; the first one that differs from everybody so far
    in at least 2 of the 3 large regions (background, shirt, hair colour) is kept. When the palette runs out (beyond
    ~50 people) the candidate with the largest (large-region, all-trait) distance to its nearest neighbour is kept
    instead; every person still gets a unique trait set.
    """
    chosen = np.zeros((0, len(_TRAIT_CHOICES)), dtype=np.int64)
    for _ in range(num_people):
        cands = _random_trait_codes(rng, candidates)  # (C, 7)
        if len(chosen) == 0:
            pick = cands[0]
        else:
            diff = cands[:, None, :] != chosen[None, :, :]  # (C, K, 7)
            large = diff[:, :, _LARGE_REGION_COLUMNS].sum(-1).min(1)  # (C,) distance to the nearest person
            full = diff.sum(-1).min(1)  # (C,)
            good = np.flatnonzero(large >= 2)
            # Lexicographic (large, full) maximum; argmax returns the first, keeping the draw deterministic.
            idx = good[0] if len(good) else int(np.argmax(large * 100 + full))
            if full[idx] == 0:
                raise ValueError(
                    f"Could not draw {num_people} visually distinct people; lower num_people + num_holdout_people."
                )
            pick = cands[idx]
        chosen = np.vstack([chosen, pick[None, :]])
    return [PortraitTraits(*(choices[c] for choices, c in zip(_TRAIT_CHOICES, row))) for row in chosen.tolist()]


def _box(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], fill: RGB, w: int) -> None:
    """Draw an ellipse or rectangle given in unit coordinates (0..1) on a ``w``x``w`` canvas."""
    x0, y0, x1, y1 = (round(v * w) for v in box)
    getattr(draw, kind)((x0, y0, x1, y1), fill=fill)


def draw_portrait(traits: PortraitTraits, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the RGB portrait of a person with ``traits`` at ``size`` x ``size`` pixels.

    ``rng`` adds small per-person variation (head width, eye height) so that two people sharing most traits still
    differ; pass a generator seeded per person to keep the benchmark deterministic.
    """
    if size < 8:
        raise ValueError(f"image_size must be at least 8 pixels to draw a face, got {size}.")
    w = size * _SUPERSAMPLE
    img = Image.new("RGB", (w, w), STRONG_COLORS[traits.background])
    draw = ImageDraw.Draw(img)
    skin, hair = SKIN_TONES[traits.skin], HAIR_COLORS[traits.hair_color]
    half_width = 0.22 + 0.03 * rng.random()  # head half-width
    eye_y = 0.42 + 0.03 * rng.random()

    _box(draw, "ellipse", (0.05, 0.72, 0.95, 1.40), STRONG_COLORS[traits.shirt], w)  # shoulders, a large region
    _box(draw, "rectangle", (0.43, 0.60, 0.57, 0.78), skin, w)  # neck
    if traits.hair_style == "long":  # hair behind the head, down to the shoulders
        _box(draw, "rectangle", (0.5 - half_width - 0.05, 0.22, 0.5 + half_width + 0.05, 0.76), hair, w)
    _box(draw, "ellipse", (0.5 - half_width, 0.18, 0.5 + half_width, 0.70), skin, w)  # face
    # Hair cap over the top of the head.
    x0, x1 = 0.5 - half_width - 0.02, 0.5 + half_width + 0.02
    draw.pieslice([round(x0 * w), round(0.10 * w), round(x1 * w), round(0.52 * w)], 180, 360, fill=hair)
    if traits.hair_style == "spiky":
        spikes = [(x0 + i * (x1 - x0) / 6, 0.31 if i % 2 == 0 else 0.02) for i in range(7)]
        draw.polygon([(round(x * w), round(y * w)) for x, y in spikes], fill=hair)
    elif traits.hair_style == "bun":
        _box(draw, "ellipse", (0.38, 0.00, 0.62, 0.20), hair, w)

    for cx in (0.40, 0.60):  # eyes: white sclera and a coloured iris
        _box(draw, "ellipse", (cx - 0.06, eye_y - 0.045, cx + 0.06, eye_y + 0.045), (255, 255, 255), w)
        _box(draw, "ellipse", (cx - 0.03, eye_y - 0.03, cx + 0.03, eye_y + 0.03), EYE_COLORS[traits.eye_color], w)
    _box(draw, "rectangle", (0.42, 0.575, 0.58, 0.61), _MOUTH, w)

    if traits.accessory == "glasses":
        for cx in (0.40, 0.60):
            x_a, y_a, x_b, y_b = (round(v * w) for v in (cx - 0.09, eye_y - 0.07, cx + 0.09, eye_y + 0.07))
            draw.rectangle((x_a, y_a, x_b, y_b), outline=_ACCESSORY_DARK, width=max(1, w // 48))
        _box(draw, "rectangle", (0.49, eye_y - 0.01, 0.51, eye_y + 0.01), _ACCESSORY_DARK, w)
    elif traits.accessory == "hat":  # sits above the hair so the hair colour stays visible
        _box(draw, "rectangle", (0.30, 0.00, 0.70, 0.14), _ACCESSORY_DARK, w)
        _box(draw, "rectangle", (0.20, 0.12, 0.80, 0.18), _ACCESSORY_DARK, w)
    elif traits.accessory == "bowtie":
        pts = [(0.36, 0.72), (0.50, 0.78), (0.36, 0.84), (0.64, 0.72), (0.50, 0.78), (0.64, 0.84)]
        draw.polygon([(round(x * w), round(y * w)) for x, y in pts[:3]], fill=_ACCESSORY_LIGHT)
        draw.polygon([(round(x * w), round(y * w)) for x, y in pts[3:]], fill=_ACCESSORY_LIGHT)
    elif traits.accessory == "earrings":
        for cx in (0.5 - half_width, 0.5 + half_width):
            _box(draw, "ellipse", (cx - 0.04, 0.50, cx + 0.04, 0.58), _GOLD, w)
    elif traits.accessory == "headband":
        _box(draw, "rectangle", (x0, 0.24, x1, 0.29), _ACCESSORY_LIGHT, w)

    return img.resize((size, size), Image.Resampling.BOX)


def transform_portrait(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A recognisable variant of ``img``: small shift, brightness and colour jitter, Gaussian noise.

    The shift is at most ``max(1, size // 32)`` pixels (1 px at 32x32) with edge replication, brightness is scaled by
    0.9-1.1, each channel is offset by up to +-10 and noise has a standard deviation of 5 grey levels.
    """
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    size = arr.shape[0]
    max_shift = max(1, size // 32)
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    padded = np.pad(arr, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    arr = padded[max_shift + dy : max_shift + dy + size, max_shift + dx : max_shift + dx + arr.shape[1]]
    arr = arr * rng.uniform(0.9, 1.1) + rng.uniform(-10.0, 10.0, size=3)
    arr = arr + rng.normal(0.0, 5.0, size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


def draw_shape(shape: str, color: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A single coloured ``shape`` (one of `SHAPES`) on a mid-grey background, at a random place and scale."""
    if shape not in SHAPES or color not in SHAPE_COLORS:
        raise ValueError(f"Unknown shape {shape!r} or colour {color!r}; choose from {SHAPES} and {list(SHAPE_COLORS)}.")
    w = size * _SUPERSAMPLE
    img = Image.new("RGB", (w, w), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.26, 0.36)  # half-extent in unit coordinates
    cx, cy = rng.uniform(0.5 - (0.48 - r), 0.5 + (0.48 - r), size=2)
    fill = SHAPE_COLORS[color]

    def pt(x: float, y: float) -> tuple[int, int]:
        return round((cx + x * r) * w), round((cy + y * r) * w)

    if shape == "circle":
        draw.ellipse([*pt(-1, -1), *pt(1, 1)], fill=fill)
    elif shape == "square":
        draw.rectangle([*pt(-0.85, -0.85), *pt(0.85, 0.85)], fill=fill)
    elif shape == "triangle":
        draw.polygon([pt(0, -1), pt(1, 0.85), pt(-1, 0.85)], fill=fill)
    elif shape == "diamond":
        draw.polygon([pt(0, -1), pt(1, 0), pt(0, 1), pt(-1, 0)], fill=fill)
    elif shape == "cross":
        draw.rectangle([*pt(-1, -0.3), *pt(1, 0.3)], fill=fill)
        draw.rectangle([*pt(-0.3, -1), *pt(0.3, 1)], fill=fill)
    else:  # star: 5 outer points, 5 inner points
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        draw.polygon([pt(rad * np.cos(a), -rad * np.sin(a)) for a, rad in zip(angles, radii)], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)
