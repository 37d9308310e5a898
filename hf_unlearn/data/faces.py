"""Procedural faces for benchmark v3: every person is one point in a space of continuous drawing parameters.

v2's portraits (``portraits.py``) combined a few shared discrete traits (8 background colours, 8 shirt colours, ...), so
each trait was worn by several people and a vision-side edit that moved one trait moved every face wearing it. Here a
face is drawn from ``FaceParams``: about forty continuous values (head shape and position, skin, hair colour, volume,
length, fringe and curl, eye spacing, size and colour, brows, nose, mouth, ears, beard, shirt colour and pattern,
glasses, background gradient and texture), each drawn independently per person, so no two people share a trait value
and every face differs from every other in many small ways at once, as real faces do.

``transform_face`` gives the test view of a face (small rotation, crop, colour jitter, blur, noise): the image
rephrasing of MLLMU-Bench's test set. ``docs/benchmark_v3.md`` reports how distinct the faces are for the pretrained
DINOv2 tower (nearest-neighbour identity accuracy of the test views, mean cross-identity cosine).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import astuple, dataclass, fields

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_SUPERSAMPLE = 4  # drawn 4x larger, then downsampled: smooth edges without antialiasing support in PIL


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(255 * r), round(255 * g), round(255 * b)


@dataclass(frozen=True)
class FaceParams:
    """The continuous drawing parameters of one face, each in [0, 1] (``draw_face`` maps them to geometry and
    colour)."""

    bg_hue: float
    bg_hue2: float
    bg_sat: float
    bg_val: float
    bg_angle: float
    bg_texture: float  # frequency of a faint diagonal texture
    head_x: float
    head_y: float
    head_width: float
    head_height: float
    jaw: float  # chin narrowness
    skin_tone: float  # light .. dark along a skin-tone line
    skin_hue: float
    hair_hue: float
    hair_sat: float
    hair_val: float
    hair_volume: float
    hair_length: float
    hair_fringe: float
    hair_part: float
    hair_curl: float
    eye_spacing: float
    eye_height: float
    eye_size: float
    iris_hue: float
    iris_val: float
    brow_angle: float
    brow_thickness: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_curve: float
    lip_hue: float
    ear_size: float
    beard: float  # < 0.6: none; above, its density
    shirt_hue: float
    shirt_sat: float
    shirt_val: float
    collar: float  # V-neck depth
    stripes: float  # < 0.5: plain; above, stripe spacing
    glasses: float  # < 0.65: none; above, frame roundness
    glasses_hue: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FaceParams:
        """One face, every parameter drawn uniformly and independently."""
        return cls(*rng.random(len(fields(cls))).tolist())

    def vector(self) -> np.ndarray:
        return np.array(astuple(self), dtype=np.float64)


def sample_faces(num: int, rng: np.random.Generator, min_distance: float = 0.9, candidates: int = 64
                 ) -> list[FaceParams]:
    """``num`` faces whose parameter vectors are at least ``min_distance`` apart (Euclidean in the unit cube: two
    random faces are about 2.6 apart), drawn greedily; a candidate too close to an earlier face is redrawn."""
    chosen: list[FaceParams] = []
    vectors = np.zeros((0, len(fields(FaceParams))))
    for _ in range(num):
        for _attempt in range(candidates):
            face = FaceParams.sample(rng)
            v = face.vector()
            if len(vectors) == 0 or np.sqrt(((vectors - v) ** 2).sum(1)).min() >= min_distance:
                break
        chosen.append(face)
        vectors = np.vstack([vectors, v[None]])
    return chosen


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def draw_face(p: FaceParams, size: int = 56) -> Image.Image:
    """Draw the RGB face ``p`` at ``size`` x ``size`` pixels (deterministic: the parameters say everything)."""
    w = size * _SUPERSAMPLE
    # Background: a two-colour gradient along a random direction with a faint diagonal texture.
    yy, xx = np.mgrid[0:w, 0:w] / w
    angle = 2 * math.pi * p.bg_angle
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    c1 = np.array(_hsv(p.bg_hue, _lerp(0.25, 0.8, p.bg_sat), _lerp(0.45, 0.95, p.bg_val)), dtype=np.float64)
    c2 = np.array(_hsv(p.bg_hue2, _lerp(0.25, 0.8, 1 - p.bg_sat), _lerp(0.45, 0.95, 1 - p.bg_val)), dtype=np.float64)
    freq = _lerp(6, 22, p.bg_texture)
    texture = 12 * np.sin(2 * math.pi * freq * (xx + yy * _lerp(-1, 1, p.bg_angle)))[..., None]
    bg = np.clip(c1 * (1 - t) + c2 * t + texture, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, mode="RGB")
    d = ImageDraw.Draw(img)

    def box(x0, y0, x1, y1):
        return [round(x0 * w), round(y0 * w), round(x1 * w), round(y1 * w)]

    def pts(points):
        return [(round(x * w), round(y * w)) for x, y in points]

    cx = _lerp(0.44, 0.56, p.head_x)
    top = _lerp(0.16, 0.26, p.head_y)
    hw = _lerp(0.17, 0.27, p.head_width)  # head half-width
    hh = _lerp(0.22, 0.30, p.head_height)  # head half-height
    cy = top + hh
    skin = _hsv(_lerp(0.03, 0.10, p.skin_hue), _lerp(0.25, 0.6, p.skin_tone), _lerp(0.97, 0.35, p.skin_tone))
    hair = _hsv(p.hair_hue, _lerp(0.0, 0.9, p.hair_sat), _lerp(0.12, 0.95, p.hair_val))
    shirt = _hsv(p.shirt_hue, _lerp(0.2, 0.95, p.shirt_sat), _lerp(0.25, 0.95, p.shirt_val))

    # Shoulders and shirt, with optional stripes and a V collar.
    shoulder_top = cy + hh * 0.85
    d.ellipse(box(cx - 0.45, shoulder_top, cx + 0.45, shoulder_top + 0.7), fill=shirt)
    if p.stripes >= 0.5:
        gap = _lerp(0.05, 0.12, (p.stripes - 0.5) * 2)
        dark = tuple(max(0, c - 70) for c in shirt)
        y = shoulder_top + gap
        while y < 1.0:
            d.rectangle(box(cx - 0.45, y, cx + 0.45, y + gap * 0.35), fill=dark)
            y += gap
        d.rectangle(box(0, 0, 0, 0), fill=dark)
        # Re-cut the shoulder outline: stripes must not paint the background.
        mask = Image.new("L", (w, w), 0)
        ImageDraw.Draw(mask).ellipse(box(cx - 0.45, shoulder_top, cx + 0.45, shoulder_top + 0.7), fill=255)
        img = Image.composite(img, Image.fromarray(bg, mode="RGB"), mask)
        d = ImageDraw.Draw(img)
    neck_w = hw * 0.45
    collar_depth = _lerp(0.03, 0.16, p.collar)
    d.rectangle(box(cx - neck_w, cy + hh * 0.6, cx + neck_w, shoulder_top + 0.04), fill=skin)
    d.polygon(pts([(cx - neck_w * 1.4, shoulder_top + 0.02), (cx + neck_w * 1.4, shoulder_top + 0.02),
                   (cx, shoulder_top + 0.02 + collar_depth)]), fill=skin)

    # Long hair falls behind the head.
    length = p.hair_length
    if length > 0.35:
        bottom = _lerp(cy, cy + hh * 1.3, (length - 0.35) / 0.65)
        spread = hw * _lerp(1.05, 1.35, p.hair_volume)
        d.rounded_rectangle(box(cx - spread, top + hh * 0.3, cx + spread, bottom), radius=round(0.08 * w), fill=hair)

    # Ears, then the head: an ellipse whose lower half narrows into the jaw.
    ear = _lerp(0.035, 0.065, p.ear_size)
    for side in (-1, 1):
        ex = cx + side * hw
        d.ellipse(box(ex - ear * 0.7, cy - ear, ex + ear * 0.7, cy + ear * 1.2), fill=skin)
    d.ellipse(box(cx - hw, top, cx + hw, cy + hh * 0.55), fill=skin)
    jaw = _lerp(0.85, 0.45, p.jaw)
    d.polygon(pts([(cx - hw, cy - hh * 0.1), (cx + hw, cy - hh * 0.1), (cx + hw * jaw, cy + hh * 0.8),
                   (cx, cy + hh), (cx - hw * jaw, cy + hh * 0.8)]), fill=skin)

    # Beard over the jaw.
    if p.beard >= 0.6:
        density = (p.beard - 0.6) / 0.4
        beard = tuple(round(_lerp(s, h, 0.5 + 0.5 * density)) for s, h in zip(skin, hair))
        d.polygon(pts([(cx - hw * 0.95, cy + hh * 0.15), (cx + hw * 0.95, cy + hh * 0.15),
                       (cx + hw * jaw, cy + hh * 0.8), (cx, cy + hh * 1.05), (cx - hw * jaw, cy + hh * 0.8)]),
                  fill=beard)

    # Hair cap: the top of the head, with a fringe, a parting and curls along its edge.
    volume = _lerp(0.02, 0.10, p.hair_volume)
    fringe = _lerp(0.18, 0.62, p.hair_fringe)  # how far down the forehead
    cap_bottom = top + hh * fringe
    d.pieslice(box(cx - hw - 0.015, top - volume, cx + hw + 0.015, top + 2 * hh * 0.75), 180, 360, fill=hair)
    d.rectangle(box(cx - hw - 0.015, top + hh * 0.1, cx + hw + 0.015, cap_bottom), fill=hair)
    part = cx + _lerp(-0.6, 0.6, p.hair_part) * hw
    d.polygon(pts([(part, top + hh * 0.05), (part - 0.03, cap_bottom + 0.005), (part + 0.03, cap_bottom + 0.005)]),
              fill=skin if p.hair_fringe > 0.5 else hair)
    curls = int(round(_lerp(0, 9, p.hair_curl)))
    if curls >= 2:
        r = (2 * hw + 0.03) / (2 * curls)
        for i in range(curls):
            x = cx - hw - 0.015 + r * (2 * i + 1)
            d.ellipse(box(x - r, cap_bottom - r * 0.8, x + r, cap_bottom + r * 0.8), fill=hair)

    # Eyes with irises, brows.
    spacing = hw * _lerp(0.32, 0.55, p.eye_spacing)
    ey = cy + hh * _lerp(-0.12, 0.12, p.eye_height)
    es = _lerp(0.028, 0.05, p.eye_size)
    iris = _hsv(p.iris_hue, 0.75, _lerp(0.2, 0.8, p.iris_val))
    brow_tilt = _lerp(-0.03, 0.03, p.brow_angle)
    thick = _lerp(0.008, 0.025, p.brow_thickness)
    brow = tuple(max(0, c - 40) for c in hair)
    for side in (-1, 1):
        ex = cx + side * spacing
        d.ellipse(box(ex - es * 1.3, ey - es, ex + es * 1.3, ey + es), fill=(250, 250, 250))
        d.ellipse(box(ex - es * 0.65, ey - es * 0.65, ex + es * 0.65, ey + es * 0.65), fill=iris)
        d.ellipse(box(ex - es * 0.25, ey - es * 0.25, ex + es * 0.25, ey + es * 0.25), fill=(10, 10, 10))
        by = ey - es * 1.9
        d.polygon(pts([(ex - es * 1.5, by + side * brow_tilt * -1), (ex + es * 1.5, by - side * brow_tilt * -1),
                       (ex + es * 1.5, by - side * brow_tilt * -1 - thick),
                       (ex - es * 1.5, by + side * brow_tilt * -1 - thick)]), fill=brow)

    # Glasses over the eyes.
    if p.glasses >= 0.65:
        roundness = (p.glasses - 0.65) / 0.35
        frame = _hsv(p.glasses_hue, 0.6, 0.3)
        r = es * 1.9
        for side in (-1, 1):
            ex = cx + side * spacing
            d.rounded_rectangle(box(ex - r, ey - r * 0.8, ex + r, ey + r * 0.8), radius=round(roundness * r * 0.8 * w),
                                outline=frame, width=max(2, w // 70))
        d.line(pts([(cx - spacing + r, ey), (cx + spacing - r, ey)]), fill=frame, width=max(2, w // 70))

    # Nose and mouth.
    nose_len = hh * _lerp(0.18, 0.38, p.nose_length)
    nose_w = hw * _lerp(0.10, 0.25, p.nose_width)
    shade = tuple(max(0, c - 45) for c in skin)
    d.polygon(pts([(cx, ey + es), (cx + nose_w, ey + es + nose_len), (cx - nose_w, ey + es + nose_len)]), fill=shade)
    my = ey + es + nose_len + hh * 0.18
    mw = hw * _lerp(0.30, 0.62, p.mouth_width)
    curve = _lerp(-0.035, 0.05, p.mouth_curve)
    lips = _hsv(_lerp(0.95, 1.02, p.lip_hue), 0.6, 0.6)
    d.polygon(pts([(cx - mw, my), (cx, my + curve + 0.012), (cx + mw, my), (cx, my + curve * 0.3 + 0.03)]),
              fill=lips)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def transform_face(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A recognisable variant of a face (the test view): rotation within ±8°, a crop of 88-100% of the side at a
    random place resized back, brightness, contrast and saturation each scaled by 0.85-1.15, Gaussian blur of radius
    0-0.6 px and noise of standard deviation 3 grey levels."""
    size = img.size[0]
    angle = rng.uniform(-8.0, 8.0)
    out = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=img.getpixel((0, 0)))
    side = rng.uniform(0.88, 1.0) * size
    x0, y0 = rng.uniform(0, size - side, size=2)
    out = out.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    arr = np.asarray(out, dtype=np.float64)
    grey = arr.mean(axis=2, keepdims=True)
    arr = grey + (arr - grey) * rng.uniform(0.85, 1.15)  # saturation
    arr = arr.mean() + (arr - arr.mean()) * rng.uniform(0.85, 1.15)  # contrast
    arr = arr * rng.uniform(0.85, 1.15)  # brightness
    out = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")
    out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.6)))
    arr = np.asarray(out, dtype=np.float64) + rng.normal(0.0, 3.0, size=(size, size, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")
