"""Line-art training pairs whose only constant is where the lines are (domain randomisation).

A model trained on ``synth``'s portraits alone learns that generator's one way of
drawing: its palettes, its soft shading ramp, its stroke weights. On drawings of another
hand it scored below XDoG. :func:`draw_pair` therefore draws a picture and its line
truth from the same geometry, and randomises everything else independently of the
truth, the way sim-to-real work randomises its simulator:

- geometry: ``synth``'s portrait polygons (hair, face, eyes, clothes, in paint order), or
  a scene of random shapes (smooth blobs, angular polygons, spiky locks, lens-shaped
  strands), with open strokes (strands, brows, folds) on top;
- lines: weight, taper along the stroke, ink colour (near black, a darker trace of the
  fill, or a colour), gaps, and regions left without an outline (no truth there either);
- fills: flat, cel shadows with a hard edge, linear and radial gradients, airbrush
  shadows, value noise, screen tones (halftone dots), hatching, highlights, painted
  detail without an outline (irises, bands of sheen, blushes); palettes of any hue,
  saturation and value, or grey;
- backgrounds: flat, gradients, stripes, bokeh, noise, screen tone;
- the picture as a whole: drawn at a lower scale and enlarged, blurred, noised, gamma and
  saturation changed, JPEG-compressed at a random quality.

Shading, tones, hatching, highlights and colour edges without an outline are never line
truth: a method that draws every colour edge loses precision on them. What the truth
holds is every outline and stroke as drawn (its weight and taper too), after occlusion.

The randomisation is split into style families (:data:`FAMILIES`; ``synth``, the
portraits of ``tasks.synth`` as the demo draws them, is one more): a run trains on some
and is scored on one it never saw (``train-lineart --holdout``), which is the figure
that says whether it learned line art or one style. Every pair depends only on
``(seed, index, size, family)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

SS = 2  # supersampling of the drawing canvas
# A stroke's truth is at least this wide on the canvas (1.5 px of the pair): where a taper
# thins the drawn line below a pixel it is still a line, and a 1 px truth line between two
# pixels would fall under the ink threshold on both.
TRUTH_MIN_WIDTH = 3
MIN_WIDTH = 2  # a drawn stroke is at least a pixel of the pair wide: thinner, blur and JPEG erase it

FAMILIES: dict[str, str] = {
    "cel": "flat fills with hard-edged cel shadows, dark outlines of even weight",
    "soft": "gradients and airbrushed shadows, thin tapered lines traced in a darker fill colour, blur",
    "tone": "black-and-white manga: screen tones, hatching, bold tapered black lines",
    "paint": "textured painterly fills, low-contrast broken lines, noise and heavy JPEG",
}

Points = list[tuple[float, float]]


@dataclass(frozen=True)
class Pair:
    """``image``: RGB ``(size, size, 3)`` uint8; ``lines``: ``(size, size)`` uint8 truth (0 ink, 255 paper)."""

    image: np.ndarray
    lines: np.ndarray
    family: str


SYNTH = "synth"  # synth's own portraits, as the demo corpus is drawn: a family too


def family_index(family: str) -> int:
    if family not in FAMILIES:
        raise ValueError(f"style family must be one of {SYNTH}, {', '.join(FAMILIES)}, not {family!r}")
    return list(FAMILIES).index(family)


# -- styles ------------------------------------------------------------------------------------
@dataclass
class _Style:
    grey: bool
    width: tuple[float, float]  # outline weight in output pixels
    taper: tuple[float, float]  # 0: even weight, 1: strokes thin to nothing between pressure peaks
    ink: str  # "black", "trace" (a darker fill colour), "colour"
    ink_value: tuple[float, float]
    gaps: float  # probability that a stretch of an outline is left out
    lineless: float  # probability that a region has no outline at all
    fills: tuple[tuple[str, float], ...]
    shadow: float  # probability of a shadow (cel or airbrush, per fill) in a region
    highlight: float
    backgrounds: tuple[str, ...]
    blur: tuple[float, float]
    noise: tuple[float, float]
    jpeg: tuple[int, int]
    scale: tuple[float, float]  # drawn at this fraction of the size, then enlarged


# Each family's draws: (grey, width, taper, inks to pick from, ink value, gaps, lineless,
# fills, shadow, highlight, backgrounds, blur, noise, JPEG quality, scale).
_STYLES: dict[str, tuple[Any, ...]] = {
    "cel": (
        False, (0.8, 2.2), (0.0, 0.35), ("black", "black", "trace"), (0.0, 0.25), 0.03, 0.05,
        (("flat", 0.45), ("cel", 0.45), ("linear", 0.1)), 0.7, 0.5, ("flat", "linear", "stripes", "bokeh"),
        (0.0, 0.5), (0.0, 3.0), (75, 97), (0.8, 1.0),
    ),
    "soft": (
        False, (0.6, 1.5), (0.3, 0.7), ("trace", "trace", "colour"), (0.1, 0.4), 0.08, 0.2,
        (("linear", 0.35), ("radial", 0.35), ("airbrush", 0.3)), 0.8, 0.8, ("linear", "radial", "bokeh"),
        (0.2, 0.8), (0.0, 3.0), (65, 95), (0.6, 1.0),
    ),
    "tone": (
        True, (0.8, 3.2), (0.3, 0.9), ("black",), (0.0, 0.12), 0.03, 0.0,
        (("flat", 0.35), ("tone", 0.4), ("hatch", 0.25)), 0.6, 0.3, ("flat", "tone", "speed"),
        (0.0, 0.6), (0.0, 5.0), (55, 95), (0.7, 1.0),
    ),
    "paint": (
        False, (1.0, 2.6), (0.1, 0.6), ("trace", "colour", "black"), (0.2, 0.5), 0.2, 0.1,
        (("noise", 0.6), ("linear", 0.2), ("cel", 0.2)), 0.6, 0.4, ("noise", "linear", "flat"),
        (0.2, 0.9), (1.0, 5.0), (45, 85), (0.55, 0.9),
    ),
}  # fmt: skip


def _style(family: str, rng: np.random.Generator) -> _Style:
    grey, width, taper, inks, *rest = _STYLES[family]
    ink = str(rng.choice(inks)) if len(inks) > 1 else inks[0]
    return _Style(grey, width, taper, ink, *rest)


def _colour(rng: np.random.Generator, grey: bool) -> np.ndarray:
    if grey:
        v = rng.choice([rng.uniform(0.85, 1.0), rng.uniform(0.45, 0.8), rng.uniform(0.05, 0.3)], p=[0.5, 0.35, 0.15])
        return np.full(3, v * 255, np.float32)
    import colorsys

    h, s, v = rng.random(), rng.uniform(0.0, 0.95), rng.uniform(0.3, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _skin(rng: np.random.Generator, grey: bool) -> np.ndarray:
    """A skin tone (half the portraits keep one; the others colour faces at random too)."""
    if grey:
        return np.full(3, rng.uniform(225, 255), np.float32)
    import colorsys

    return (
        np.asarray(
            colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.05, 0.4), rng.uniform(0.75, 1.0)), np.float32
        )
        * 255
    )


# -- geometry ----------------------------------------------------------------------------------
def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 48) -> Points:
    harm = [(k, rng.uniform(0, 0.35) / k, rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    rot, sx = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.0)
    out = []
    for i in range(n):
        t = 2 * math.pi * i / n
        rr = r * (1 + sum(a * math.cos(k * t + ph) for k, a, ph in harm))
        x, y = rr * math.cos(t) * sx, rr * math.sin(t)
        out.append((cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)))
    return out


def _angular(rng: np.random.Generator, cx: float, cy: float, r: float) -> Points:
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    return [
        (cx + r * rng.uniform(0.5, 1.2) * math.cos(a), cy + r * rng.uniform(0.5, 1.2) * math.sin(a)) for a in angles
    ]


def _spiky(rng: np.random.Generator, cx: float, cy: float, r: float) -> Points:
    spikes = int(rng.integers(4, 12))
    out = []
    for i in range(2 * spikes):
        t = 2 * math.pi * i / (2 * spikes) + rng.uniform(-0.1, 0.1)
        rr = r * (rng.uniform(1.0, 1.5) if i % 2 == 0 else rng.uniform(0.45, 0.8))
        out.append((cx + rr * math.cos(t), cy + rr * math.sin(t)))
    return out


def _curve(rng: np.random.Generator, size: float, n: int = 24) -> Points:
    """A cubic Bezier across part of the canvas."""
    p = [np.asarray((rng.uniform(0, size), rng.uniform(0, size)))]
    for _ in range(3):
        p.append(p[-1] + rng.normal(0, size * 0.18, 2))
    pts = []
    for i in range(n):
        t = i / (n - 1)
        q = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
        pts.append((float(q[0]), float(q[1])))
    return pts


def _strand(rng: np.random.Generator, size: float) -> Points:
    """A lens-shaped lock of hair along a curve: the curve out, then back offset."""
    spine = _curve(rng, size, 20)
    w = rng.uniform(0.01, 0.04) * size
    out, back = [], []
    for i, (x, y) in enumerate(spine):
        j = min(i + 1, len(spine) - 1)
        k = max(i - 1, 0)
        dx, dy = spine[j][0] - spine[k][0], spine[j][1] - spine[k][1]
        norm = math.hypot(dx, dy) or 1.0
        wide = w * math.sin(math.pi * i / (len(spine) - 1))
        out.append((x - dy / norm * wide, y + dx / norm * wide))
        back.append((x + dy / norm * wide, y - dx / norm * wide))
    return out + back[::-1]


def _scene(rng: np.random.Generator, size: int) -> tuple[list[tuple[str, Points]], list[Points]]:
    """(closed regions back to front, labelled "shape", open strokes) of a random scene."""
    regions: list[Points] = []
    for _ in range(int(rng.integers(4, 12))):
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        r = size * rng.uniform(0.06, 0.35)
        kind = rng.choice(["blob", "blob", "angular", "spiky", "strand"])
        if kind == "blob":
            regions.append(_blob(rng, cx, cy, r))
        elif kind == "angular":
            regions.append(_angular(rng, cx, cy, r))
        elif kind == "spiky":
            regions.append(_spiky(rng, cx, cy, r))
        else:
            regions.append(_strand(rng, size))
    strokes = [_curve(rng, size) for _ in range(int(rng.integers(0, 6)))]
    return [("shape", pts) for pts in regions], strokes


def _portrait_geometry(
    rng: np.random.Generator, seed: int, index: int, size: int
) -> tuple[list[tuple[str, Points]], list[Points]]:
    from tasks.synth import draw_portrait

    shapes = draw_portrait(seed, index, size).shapes
    regions = [(label, pts) for label, pts in shapes]
    strokes: list[Points] = []
    for _ in range(int(rng.integers(1, 7))):  # strands, folds, brows: open strokes near the figure
        c = regions[int(rng.integers(0, len(regions)))][1]
        x0, y0 = c[int(rng.integers(0, len(c)))]
        ang, length = rng.uniform(0, 2 * math.pi), size * rng.uniform(0.04, 0.2)
        bend = rng.uniform(-0.5, 0.5)
        strokes.append(
            [
                (x0 + length * t * math.cos(ang + bend * t), y0 + length * t * math.sin(ang + bend * t))
                for t in np.linspace(0, 1, 10)
            ]
        )
    return regions, strokes


# -- painting ----------------------------------------------------------------------------------
class _Canvas:
    def __init__(self, n: int, rng: np.random.Generator, style: _Style) -> None:
        self.n, self.rng, self.style = n, rng, style
        self.image = np.zeros((n, n, 3), np.float32)
        self.lines = Image.new("L", (n, n), 255)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        self.yy, self.xx = yy, xx
        ang = rng.uniform(0, 2 * math.pi)
        self.light = np.cos(ang) * xx + np.sin(ang) * yy  # where the light comes from
        self.light_dir = (math.cos(ang), math.sin(ang))

    def mask(self, pts: Points) -> np.ndarray:
        m = Image.new("L", (self.n, self.n), 0)
        ImageDraw.Draw(m).polygon([(x * SS, y * SS) for x, y in pts], fill=255)
        return np.asarray(m, np.float32) / 255

    def paste(self, tex: np.ndarray, alpha: np.ndarray) -> None:
        """Blend ``tex`` (a colour ``(3,)`` or a canvas ``(n, n, 3)``) in where ``alpha`` (0..1) says,
        within the bounding box of ``alpha``."""
        rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
        if not len(rows):
            return
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        a = alpha[y0:y1, x0:x1, None]
        t = tex[y0:y1, x0:x1] if tex.ndim == 3 else tex
        sub = self.image[y0:y1, x0:x1]
        sub *= 1 - a
        sub += t * a

    def texture(self, kind: str, base: np.ndarray, pts: Points) -> np.ndarray:
        rng, n = self.rng, self.n
        if kind in ("flat", "cel", "airbrush"):  # one colour (a cel or airbrushed shadow comes after)
            return base
        if kind == "linear":
            g = 1 + rng.uniform(0.15, 0.5) * (self.light - 0.5)
            return base * g[..., None]
        if kind == "radial":
            cx, cy = np.mean([p[0] for p in pts]) / n * SS, np.mean([p[1] for p in pts]) / n * SS
            d = np.sqrt((self.xx - cx) ** 2 + (self.yy - cy) ** 2)
            g = 1.15 - rng.uniform(0.3, 0.9) * d
            return base * g[..., None]
        if kind == "noise":
            return base * (1 + rng.uniform(0.1, 0.35) * _value_noise(rng, n))[..., None]
        if kind == "tone":
            level = rng.uniform(0.2, 0.7)
            return np.broadcast_to(_halftone(rng, n, level)[..., None] * 255, (n, n, 3)).astype(np.float32)
        if kind == "hatch":
            flat = np.broadcast_to(base, (n, n, 3)).astype(np.float32)
            h = _hatching(rng, n)
            return flat * (1 - h[..., None]) + h[..., None] * rng.uniform(40, 110)
        raise ValueError(kind)

    def shadow(self, kind: str, base: np.ndarray, region: np.ndarray, pts: Points) -> None:
        """A darker part of a region on the side away from the light: a hard cel edge or an
        airbrushed one (never line truth)."""
        rng = self.rng
        dark = base * rng.uniform(0.55, 0.85)
        if self.style.grey and kind in ("tone", "hatch", "flat"):
            tone = _halftone(rng, self.n, rng.uniform(0.45, 0.8))[..., None] * base
            dark = np.broadcast_to(tone, (self.n, self.n, 3))
        cx, cy = np.mean([p[0] for p in pts]), np.mean([p[1] for p in pts])
        r = max(np.ptp([p[0] for p in pts]), np.ptp([p[1] for p in pts]), 4.0) * rng.uniform(0.5, 0.9)
        ox, oy = self.light_dir
        shade = self.mask(_blob(rng, cx + ox * r * 0.5, cy + oy * r * 0.5, r))
        if kind == "airbrush" or (not self.style.grey and rng.random() < 0.2):
            shade = cv2.GaussianBlur(shade, (0, 0), self.n * rng.uniform(0.01, 0.03))
        self.paste(np.asarray(dark, np.float32), shade * region)

    def decor(self, region: np.ndarray, pts: Points) -> None:
        """Painted detail without an outline inside a region (an iris, a band of sheen, a
        blush, a pattern patch): a colour edge that is not a line."""
        rng = self.rng
        cx, cy = np.mean([p[0] for p in pts]), np.mean([p[1] for p in pts])
        r = max(np.ptp([p[0] for p in pts]), np.ptp([p[1] for p in pts]), 4.0) / 2
        x, y = cx + rng.uniform(-0.5, 0.5) * r, cy + rng.uniform(-0.5, 0.5) * r
        if rng.random() < 0.5:
            shape = _blob(rng, x, y, r * rng.uniform(0.1, 0.4))
        else:  # a band across the region
            ang, half = rng.uniform(0, math.pi), r * rng.uniform(0.04, 0.15)
            dx, dy = math.cos(ang) * r * 1.5, math.sin(ang) * r * 1.5
            nx, ny = -math.sin(ang) * half, math.cos(ang) * half
            shape = [
                (x - dx + nx, y - dy + ny),
                (x + dx + nx, y + dy + ny),
                (x + dx - nx, y + dy - ny),
                (x - dx - nx, y - dy - ny),
            ]
        spot = self.mask(shape) * region
        if rng.random() < 0.3:
            spot = cv2.GaussianBlur(spot, (0, 0), self.n * 0.004)
        self.paste(_colour(rng, self.style.grey), spot * rng.uniform(0.5, 1.0))

    def highlight(self, region: np.ndarray, pts: Points) -> None:
        rng = self.rng
        x, y = pts[int(rng.integers(0, len(pts)))]
        cx, cy = float(np.mean([p[0] for p in pts])), float(np.mean([p[1] for p in pts]))
        hx, hy = cx + (x - cx) * rng.uniform(0.3, 0.7), cy + (y - cy) * rng.uniform(0.3, 0.7)
        spot = self.mask(_blob(rng, hx, hy, max(2.0, math.hypot(x - cx, y - cy) * rng.uniform(0.08, 0.25))))
        if rng.random() < 0.5:
            spot = cv2.GaussianBlur(spot, (0, 0), self.n * 0.006)
        self.paste(np.full(3, 255, np.float32), spot * region * rng.uniform(0.6, 1.0))

    def stroke(self, pts: Points, closed: bool, ink: np.ndarray) -> None:
        """An outline of varying weight (taper), with gaps, into the image and the truth."""
        rng, st = self.rng, self.style
        xy = [(x * SS, y * SS) for x, y in pts]
        if closed:
            xy = xy + xy[:1]
        base_w = rng.uniform(*st.width) * SS
        taper = rng.uniform(*st.taper)
        peaks = rng.uniform(0.5, 2.5)
        phase = rng.uniform(0, math.pi)
        img = Image.new("L", (self.n, self.n), 0)
        di, dl = ImageDraw.Draw(img), ImageDraw.Draw(self.lines)
        gap_left = 0
        total = len(xy) - 1
        for i in range(total):
            if gap_left > 0:
                gap_left -= 1
                continue
            if st.gaps and rng.random() < st.gaps / 4:
                gap_left = int(rng.integers(1, 4))
                continue
            t = i / max(total, 1)
            w = base_w * (1 - taper + taper * abs(math.sin(math.pi * peaks * t + phase)))
            if not closed:  # an open stroke thins at both ends, like a pen lifted
                w *= min(1.0, 0.3 + 2.5 * min(t, 1 - t))
            wi = max(MIN_WIDTH, int(round(w)))
            wt = max(wi, TRUTH_MIN_WIDTH)
            di.line([xy[i], xy[i + 1]], fill=255, width=wi)
            dl.line([xy[i], xy[i + 1]], fill=0, width=wt)
            for canvas, width, value in ((di, wi, 255), (dl, wt, 0)):
                if width > 2:  # round joints
                    r = width / 2
                    for px, py in (xy[i], xy[i + 1]):
                        canvas.ellipse([px - r, py - r, px + r, py + r], fill=value)
        self.paste(ink, np.asarray(img, np.float32) / 255)

    def occlude(self, region: np.ndarray) -> None:
        """A region painted on top hides the lines behind it."""
        covered = Image.fromarray(((region > 0.5) * 255).astype(np.uint8), "L")
        self.lines.paste(255, (0, 0), covered)


def _value_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth noise in about [-1, 1] (a few octaves of enlarged random grids)."""
    out = np.zeros((n, n), np.float32)
    for cells, amp in ((4, 0.5), (12, 0.3), (40, 0.2)):
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        out += amp * cv2.resize(grid, (n, n), interpolation=cv2.INTER_CUBIC)
    return out


def _halftone(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    """A screen tone: round dots on a rotated grid covering about ``level`` of the area; 0 dot, 1 paper."""
    period = rng.uniform(3.0, 7.0) * SS
    ang = rng.uniform(0, math.pi / 2)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    u = (xx * math.cos(ang) + yy * math.sin(ang)) / period
    v = (-xx * math.sin(ang) + yy * math.cos(ang)) / period
    d = np.sqrt((u - np.round(u)) ** 2 + (v - np.round(v)) ** 2)
    radius = math.sqrt(level / math.pi)
    return np.clip((d - radius) * period, 0, 1)


def _hatching(rng: np.random.Generator, n: int) -> np.ndarray:
    """Parallel thin strokes (alpha 0..1) at a random angle and spacing, sometimes crossed."""
    out = np.zeros((n, n), np.float32)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    for _ in range(1 if rng.random() < 0.6 else 2):
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 8.0) * SS
        u = (xx * math.cos(ang) + yy * math.sin(ang)) / period
        out = np.maximum(out, np.clip(1 - np.abs(u - np.round(u)) * period / (0.5 * SS), 0, 1))
    return out * rng.uniform(0.4, 0.8)


def _background(c: _Canvas, kind: str) -> None:
    rng, n = c.rng, c.n
    a, b = _colour(rng, c.style.grey), _colour(rng, c.style.grey)
    if c.style.grey:
        a = np.full(3, rng.uniform(200, 255), np.float32)
    if kind == "flat":
        c.image[:] = a
    elif kind in ("linear", "radial"):
        t = c.light if kind == "linear" else np.sqrt((c.xx - 0.5) ** 2 + (c.yy - 0.5) ** 2) * 1.4
        t = np.clip(t * rng.uniform(0.6, 1.4), 0, 1)[..., None]
        c.image[:] = a * (1 - t) + b * t
    elif kind == "stripes":
        c.image[:] = a
        period = rng.uniform(0.05, 0.2)
        ang = rng.uniform(0, math.pi)
        u = (c.xx * math.cos(ang) + c.yy * math.sin(ang)) / period
        c.paste(b, ((u - np.floor(u)) < 0.5).astype(np.float32))
    elif kind == "bokeh":
        c.image[:] = a
        for _ in range(int(rng.integers(5, 25))):
            spot = c.mask(_blob(rng, rng.uniform(0, n / SS), rng.uniform(0, n / SS), rng.uniform(0.02, 0.1) * n / SS))
            spot = cv2.GaussianBlur(spot, (0, 0), n * rng.uniform(0.002, 0.02))
            c.paste(_colour(rng, False), spot * rng.uniform(0.3, 0.8))
    elif kind == "noise":
        c.image[:] = a * (1 + 0.3 * _value_noise(rng, n))[..., None]
    elif kind == "tone":
        c.image[:] = _halftone(rng, n, rng.uniform(0.1, 0.4))[..., None] * a
    elif kind == "speed":  # radial speed lines of a manga panel: thin, grey, never truth
        c.image[:] = a
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        ang = np.arctan2(c.yy - cy, c.xx - cx)
        k = rng.integers(60, 180)
        lines = np.clip(np.cos(ang * k) * 4 - 3, 0, 1) * (np.sqrt((c.xx - cx) ** 2 + (c.yy - cy) ** 2) > 0.3)
        c.paste(np.full(3, rng.uniform(60, 140), np.float32), lines.astype(np.float32) * 0.7)
    else:
        raise ValueError(kind)


def _ink(c: _Canvas, fill: np.ndarray) -> np.ndarray:
    rng, st = c.rng, c.style
    v = rng.uniform(*st.ink_value)
    if st.ink == "black" or st.grey:
        return np.full(3, v * 255, np.float32)
    if st.ink == "trace":
        return np.clip(fill * rng.uniform(0.25, 0.5) + v * 60, 0, 255)
    return np.clip(_colour(rng, False) * rng.uniform(0.3, 0.6), 0, 255)


def draw_pair(seed: int, index: int, size: int, family: str) -> Pair:
    """Pair ``index`` of ``family`` for ``seed`` at ``size`` px (see the module docstring)."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, not {size}")
    if family == SYNTH:
        from tasks.synth import draw_portrait

        p = draw_portrait(seed, index, size)
        return Pair(p.image, p.lines, family)
    fam = family_index(family)
    rng = np.random.default_rng([seed, fam, index])
    style = _style(family, rng)
    scale = rng.uniform(*style.scale)
    side = max(32, int(round(size * scale)))
    c = _Canvas(side * SS, rng, style)
    if rng.random() < 0.5:
        regions, strokes = _portrait_geometry(rng, seed * 7919 + fam, index, side)
    else:
        regions, strokes = _scene(rng, side)
    _background(c, str(rng.choice(style.backgrounds)))
    kinds, weights = zip(*style.fills, strict=True)
    skin = _skin(rng, style.grey) if rng.random() < 0.6 else None
    for label, pts in regions:
        region = c.mask(pts)
        if not region.any():
            continue
        base = skin if skin is not None and label in ("face", "skin") else _colour(rng, style.grey)
        kind = str(rng.choice(kinds, p=np.asarray(weights) / sum(weights)))
        c.paste(c.texture(kind, base, pts), region)
        if rng.random() < style.shadow:
            c.shadow(kind, base, region, pts)
        if rng.random() < style.highlight * 0.5:
            c.highlight(region, pts)
        for _ in range(int(rng.integers(0, 3))):
            c.decor(region, pts)
        c.occlude(region)
        if rng.random() >= style.lineless:
            c.stroke(pts, True, _ink(c, base))
    for pts in strokes:
        c.stroke(pts, False, _ink(c, _colour(rng, style.grey)))
    image = cv2.resize(np.clip(c.image, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
    lines = np.asarray(c.lines.resize((size, size), Image.Resampling.LANCZOS)).copy()
    return Pair(_degrade(image, rng, style), lines, family)


def _degrade(image: np.ndarray, rng: np.random.Generator, style: _Style) -> np.ndarray:
    """Blur, gamma, saturation, noise and JPEG: what happens to a picture after it is drawn."""
    img: np.ndarray = image.astype(np.float32)
    sigma = rng.uniform(*style.blur)
    if sigma > 0.15:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(0.75, 1.3)
    if not style.grey:
        mean = img.mean(axis=2, keepdims=True)
        img = mean + (img - mean) * rng.uniform(0.6, 1.3)
    else:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    img = img + rng.normal(0, rng.uniform(*style.noise), img.shape)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*style.jpeg))])
    if not ok:
        return out
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out if decoded is None else np.ascontiguousarray(decoded[..., ::-1])


PARALLEL_PIXELS = 64 * 256 * 256  # below this many pixels in all, pairs are drawn on the calling thread


def draw_pairs(
    seed: int, count: int, size: int, families: list[str], workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs, the families taken in turn: RGB ``(N, size, size, 3)`` and ``(N, size, size)`` uint8.

    Large sets are drawn by ``workers`` threads (default: one per core; a pair takes about
    0.08 s at 256 px, and OpenCV, NumPy and Pillow let go of the GIL for most of it: 64
    pairs in 5.4 s on one thread, 3.4 s on two); every pair depends only on its own
    arguments, so the result does not depend on how the work was split.
    """
    if not families:
        raise ValueError("at least one style family is needed")
    jobs = [(seed, i, size, families[i % len(families)]) for i in range(count)]
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers > 1 and count * size * size >= PARALLEL_PIXELS:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            pairs = list(pool.map(_draw_job, jobs))
    else:
        pairs = [_draw_job(j) for j in jobs]
    return np.stack([p.image for p in pairs]), np.stack([p.lines for p in pairs])


def _draw_job(job: tuple[int, int, int, str]) -> Pair:
    return draw_pair(*job)
