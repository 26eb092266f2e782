"""Procedural anime-style portraits with exact truth: the stand-in for Danbooru.

:func:`draw_portrait` turns ``(seed, index, size)`` into a :class:`Portrait`: an RGB image,
its class-id mask, its line art and the labelled polygons they were drawn from. Every
portrait depends only on its own ``(seed, index)``, so any shard of a corpus can be drawn
alone and the result never depends on how the work was split.

Truth is exact by construction: each labelled region is one polygon (two-decimal
coordinates, as written to the labelme JSON), the mask is those polygons rasterised the
way labelme rasterises them (Pillow's polygon fill with outline, later shapes painting
over earlier ones), and the image and line art are rendered from the very same polygons
at twice the resolution, then downsampled.

Paint order (back to front): background, back hair, neck and chest, clothes (with a bow),
face (blush, eyebrows, nose), eyes (sclera, iris, pupil, highlights, lashes), mouth, bangs
and side locks with the shadow they cast on the face, and sometimes a hand in front.
Pose (position, scale, tilt), palette, shading, stroke width, hair length, bang shape,
gaze, mouth type and background pattern all vary per portrait.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from storage.workspace import DEFAULT_CLASSES

CLASS_ID = {name: i for i, name in enumerate(DEFAULT_CLASSES)}
SS = 2  # supersampling factor of the rendered image and line art

Points = list[tuple[float, float]]


@dataclass
class Portrait:
    """One drawn portrait.

    - ``image``: ``(size, size, 3)`` uint8 RGB, 0..255.
    - ``mask``: ``(size, size)`` uint8 class ids of ``DEFAULT_CLASSES`` (0 background).
    - ``lines``: ``(size, size)`` uint8 line art, 0 ink, 255 paper.
    - ``shapes``: ``(label, points)`` in paint order, points in pixel coordinates.
    """

    image: np.ndarray
    mask: np.ndarray
    lines: np.ndarray
    shapes: list[tuple[str, Points]] = field(default_factory=list)


def rasterize(shapes: list[tuple[str, Points]], size: int) -> np.ndarray:
    """Class-id mask of labelled polygons, exactly as labelme rasterises them: ``(size, size)`` uint8 (0 background)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for label, pts in shapes:
        cid = CLASS_ID[label]
        draw.polygon([tuple(p) for p in pts], fill=cid, outline=cid)
    return np.asarray(canvas).copy()


# -- colour helpers ------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return (int(r * 255), int(g * 255), int(b * 255))


def _shade(c: tuple[int, int, int], k: float) -> tuple[int, int, int]:
    return tuple(int(min(max(v * k, 0), 255)) for v in c)  # type: ignore[return-value]


class _Painter:
    """Draws filled, shaded, outlined polygons onto the image and the line-art canvases."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.n = size * SS
        self.rng = rng
        self.image = Image.new("RGB", (self.n, self.n))
        self.lines = Image.new("L", (self.n, self.n), 255)
        self.shapes: list[tuple[str, Points]] = []
        self.stroke = max(1.0, rng.uniform(0.7, 1.6) * size / 256) * SS
        self.ink = _hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.08, 0.25))
        yy, xx = np.mgrid[0 : self.n, 0 : self.n].astype(np.float32) / self.n
        ang = rng.uniform(0, 2 * math.pi)
        self.light = (np.cos(ang) * xx + np.sin(ang) * yy).astype(np.float32)  # shading ramp

    def clip(self, pts: Points) -> Points:
        s = float(self.size)
        return [(round(min(max(x, 0.0), s), 2), round(min(max(y, 0.0), s), 2)) for x, y in pts]

    def region(self, pts: Points) -> Image.Image:
        m = Image.new("L", (self.n, self.n), 0)
        ImageDraw.Draw(m).polygon([(x * SS, y * SS) for x, y in pts], fill=255)
        return m

    def fill(self, mask: Image.Image, color: tuple[int, int, int], shading: float = 0.25) -> None:
        base = np.asarray(color, np.float32)
        gain = 1.0 + shading * (self.light - 0.5)
        tex = np.clip(base[None, None, :] * gain[..., None], 0, 255).astype(np.uint8)
        self.image.paste(Image.fromarray(tex, "RGB"), (0, 0), mask)

    def outline(
        self, pts: Points, width: float | None = None, color: tuple[int, int, int] | None = None, closed: bool = True
    ) -> None:
        w = int(round(width if width is not None else self.stroke))
        xy = [(x * SS, y * SS) for x, y in pts]
        if closed:
            xy = xy + xy[:1]
        ImageDraw.Draw(self.image).line(xy, fill=color or self.ink, width=w, joint="curve")
        ImageDraw.Draw(self.lines).line(xy, fill=0, width=w, joint="curve")

    def shape(
        self, label: str | None, pts: Points, color: tuple[int, int, int], shading: float = 0.25, stroke: bool = True
    ) -> tuple[Points, Image.Image]:
        """Paint one region; labelled ones are recorded as truth polygons."""
        pts = self.clip(pts)
        mask = self.region(pts)
        self.fill(mask, color, shading)
        self.lines.paste(255, (0, 0), mask)  # occludes the strokes of what lies behind
        if stroke:
            self.outline(pts)
        if label is not None:
            self.shapes.append((label, pts))
        return pts, mask

    def overlay(self, pts: Points, color: tuple[int, int, int], within: Image.Image, alpha: int = 255) -> None:
        """Paint ``pts`` clipped to the region ``within`` (shading, iris, blush; no truth)."""
        m = self.region(self.clip(pts))
        m = ImageChops.multiply(m, within)
        if alpha < 255:
            m = m.point(lambda v: v * alpha // 255)
        self.image.paste(color, (0, 0), m)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40, rot: float = 0.0) -> Points:
    c, s = math.cos(rot), math.sin(rot)
    out = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        out.append((cx + c * x - s * y, cy + s * x + c * y))
    return out


class _Frame:
    """Head-local coordinates (unit = head radius, v down) to pixels, with tilt."""

    def __init__(self, cx: float, cy: float, r: float, tilt: float) -> None:
        self.cx, self.cy, self.r = cx, cy, r
        self.c, self.s = math.cos(tilt), math.sin(tilt)

    def __call__(self, pts: list[tuple[float, float]]) -> Points:
        r, c, s = self.r, self.c, self.s
        return [(self.cx + r * (c * u - s * v), self.cy + r * (s * u + c * v)) for u, v in pts]


def _background(p: _Painter, rng: np.random.Generator) -> None:
    n = float(p.n)
    c1 = np.asarray(_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.5, 1.0)), np.float32)
    c2 = np.asarray(_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.4, 1.0)), np.float32)
    t = np.clip(p.light[..., None] * rng.uniform(0.5, 1.5), 0, 1)
    bg = Image.fromarray((c1 * (1 - t) + c2 * t).astype(np.uint8), "RGB")
    p.image.paste(bg)
    draw = ImageDraw.Draw(p.image)
    kind = rng.integers(0, 4)
    accent = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.6, 1.0))
    if kind == 1:  # stripes
        step = int(rng.uniform(0.04, 0.12) * n)
        for xs in range(-p.n, p.n, step * 2):
            draw.polygon([(xs, 0), (xs + step, 0), (xs + step + n // 2, n), (xs + n // 2, n)], fill=accent)
    elif kind == 2:  # dots / bokeh
        for _ in range(int(rng.integers(5, 30))):
            x, y, rad = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.01, 0.08) * n
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=_shade(accent, rng.uniform(0.8, 1.1)))
    elif kind == 3:  # a window-like block
        x0, y0 = rng.uniform(0, 0.5) * n, rng.uniform(0, 0.4) * n
        draw.rectangle([x0, y0, x0 + rng.uniform(0.2, 0.5) * n, y0 + rng.uniform(0.2, 0.5) * n], fill=accent)


def draw_portrait(seed: int, index: int, size: int = 512) -> Portrait:
    """Draw portrait ``index`` of the corpus seeded by ``seed`` (see module docstring).

    Image RGB ``(size, size, 3)`` uint8 in 0..255; mask ``(size, size)`` uint8 class ids;
    lines ``(size, size)`` uint8 drawing (0 ink, 255 paper).
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, not {size}")
    rng = np.random.default_rng([seed, index])
    p = _Painter(size, rng)
    r = size * rng.uniform(0.2, 0.3)
    cx = size * rng.uniform(0.38, 0.62)
    cy = size * rng.uniform(0.34, 0.48)
    tilt = math.radians(rng.uniform(-16, 16))
    head = _Frame(cx, cy, r, tilt)
    body = _Frame(cx, cy, r, tilt * 0.3)

    hair = _hsv(rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.25, 0.98))
    skin = _hsv(rng.uniform(0.03, 0.09), rng.uniform(0.08, 0.35), rng.uniform(0.8, 1.0))
    eye_c = _hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.35, 0.9))
    cloth = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.15, 0.95))
    hair_shade = rng.uniform(0.2, 0.6)

    _background(p, rng)

    # back hair: crown arc, then long sides down to a jagged hem
    length = rng.uniform(0.7, 3.0)
    width = rng.uniform(1.05, 1.45)
    back: list[tuple[float, float]] = []
    for k in range(25):
        t = math.pi + math.pi * k / 24
        back.append((1.12 * math.cos(t), 1.12 * math.sin(t) * 1.05))
    back.append((width, 0.4 * length))
    n_tips = int(rng.integers(4, 9))
    for k in range(n_tips + 1):
        u = width - 2 * width * k / n_tips
        back.append((u, length + (0.25 * rng.random() if k % 2 == 0 else -0.15 * rng.random())))
    back.append((-width, 0.4 * length))
    p.shape("hair", head(back), _shade(hair, 0.8), hair_shade)

    # neck and chest (skin), then clothes over them
    neck_w = rng.uniform(0.18, 0.26)
    chest = [
        (-neck_w, 0.45),
        (neck_w, 0.45),
        (neck_w + 0.05, 1.3),
        (0.55, 1.55),
        (0.5, 2.4),
        (-0.5, 2.4),
        (-0.55, 1.55),
        (-neck_w - 0.05, 1.3),
    ]
    _, chest_mask = p.shape("skin", body(chest), skin, 0.2)
    p.overlay(
        body([(-neck_w, 0.45), (neck_w, 0.45), (neck_w, 0.75), (0, 0.85), (-neck_w, 0.75)]),
        _shade(skin, 0.82),
        chest_mask,
    )
    sw = rng.uniform(1.3, 1.9)
    sy = rng.uniform(1.25, 1.45)
    vdepth = rng.uniform(1.45, 2.0)
    collar = [
        (-sw, 6.0),
        (-sw, sy + 0.35),
        (-sw + 0.3, sy + 0.02),
        (-0.55, sy - 0.05),
        (-neck_w - 0.06, 1.25),
        (0.0, vdepth),
        (neck_w + 0.06, 1.25),
        (0.55, sy - 0.05),
        (sw - 0.3, sy + 0.02),
        (sw, sy + 0.35),
        (sw, 6.0),
    ]
    p.shape("clothes", body(collar), cloth, 0.35)
    if rng.random() < 0.5:  # a bow at the collar
        bw = rng.uniform(0.15, 0.3)
        bow = [
            (0, vdepth - 0.1),
            (-bw, vdepth - 0.25),
            (-bw, vdepth + 0.15),
            (0, vdepth + 0.02),
            (bw, vdepth + 0.15),
            (bw, vdepth - 0.25),
        ]
        p.shape("clothes", body(bow), _hsv(rng.random(), 0.8, 0.85), 0.2)

    # face: round top, tapered chin
    chin = rng.uniform(0.92, 1.08)
    fw = rng.uniform(0.8, 0.92)
    face: list[tuple[float, float]] = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        u, v = fw * math.cos(t), math.sin(t)
        if v > 0:
            v *= chin
            u *= 1 - 0.38 * (v / chin) ** 2
        else:
            v *= 0.95
        face.append((u, v))
    _, face_mask = p.shape("face", head(face), skin, 0.15)
    if rng.random() < 0.6:  # blush
        for side in (-1, 1):
            p.overlay(head(_ellipse_local(side * 0.45, 0.45, 0.17, 0.07)), _hsv(0.97, 0.45, 1.0), face_mask, 120)
    for side in (-1, 1):  # eyebrows (face class; often under the bangs)
        p.outline(head([(side * 0.18, -0.22), (side * 0.35, -0.3), (side * 0.55, -0.24)]), closed=False)
    p.outline(head([(0.02, 0.36), (0.0, 0.4)]), closed=False)  # nose

    # eyes
    ew, eh = rng.uniform(0.26, 0.36), rng.uniform(0.16, 0.3)
    ex, ey = rng.uniform(0.3, 0.4), rng.uniform(0.05, 0.18)
    gaze = rng.uniform(-0.25, 0.25)
    for side in (-1, 1):
        outline_pts: list[tuple[float, float]] = []
        for k in range(21):  # upper lid, outer to inner
            a = -1 + 2 * k / 20
            outline_pts.append((side * ex + a * ew / 2, ey - eh / 2 * (1 - a * a) ** 0.6 - 0.02 * side * a))
        for k in range(1, 20):  # lower lid
            a = 1 - 2 * k / 20
            outline_pts.append((side * ex + a * ew / 2, ey + eh / 2 * (1 - a * a) ** 1.4))
        eye_pts, eye_mask = p.shape("eye", head(outline_pts), (250, 250, 250), 0.05, stroke=False)
        icx = side * ex + gaze * ew / 2
        p.overlay(head(_ellipse_local(icx, ey + 0.01, ew * 0.3, eh * 0.62)), eye_c, eye_mask)
        p.overlay(head(_ellipse_local(icx, ey + eh * 0.2, ew * 0.26, eh * 0.35)), _shade(eye_c, 1.3), eye_mask)
        p.overlay(head(_ellipse_local(icx, ey + 0.02, ew * 0.12, eh * 0.28)), _shade(eye_c, 0.25), eye_mask)
        p.overlay(head(_ellipse_local(icx - ew * 0.1, ey - eh * 0.15, ew * 0.07, ew * 0.07)), (255, 255, 255), eye_mask)
        p.outline(eye_pts[:21], width=p.stroke * rng.uniform(1.6, 2.6), closed=False)  # lashes
        p.outline(eye_pts[20:] + eye_pts[:1], width=p.stroke * 0.6, closed=False)

    # mouth
    mw = rng.uniform(0.1, 0.3)
    my = rng.uniform(0.55, 0.68)
    opened = rng.uniform(0.02, 0.2) if rng.random() < 0.6 else 0.025
    mouth = [(-mw / 2 + mw * k / 12, my - 0.012 * math.sin(math.pi * k / 12)) for k in range(13)]
    mouth += [(mw / 2 - mw * k / 12, my + opened * math.sin(math.pi * k / 12) ** 0.7) for k in range(1, 12)]
    mouth_pts, mouth_mask = p.shape("mouth", head(mouth), (150, 40, 50), 0.1, stroke=opened < 0.05)
    if opened >= 0.05:
        p.overlay(head(_ellipse_local(0, my + opened * 0.8, mw * 0.3, opened * 0.5)), (235, 110, 120), mouth_mask)
        p.outline(mouth_pts, width=p.stroke * 0.8)

    # bangs and side locks, with the shadow they cast on the face
    bangs: list[tuple[float, float]] = [(-1.0, rng.uniform(0.6, 1.1))]
    for k in range(31):
        t = math.pi + math.pi * k / 30
        bangs.append((1.1 * math.cos(t), 1.1 * math.sin(t) * 1.02 - 0.02))
    bangs.append((1.0, rng.uniform(0.6, 1.1)))
    lock_in = rng.uniform(0.62, 0.8)
    bangs.append((lock_in, 0.1))
    n_spikes = int(rng.integers(3, 8))
    tip_low, tip_high = rng.uniform(-0.05, 0.15), rng.uniform(-0.35, -0.15)
    for k in range(1, 2 * n_spikes):
        u = lock_in - 2 * lock_in * k / (2 * n_spikes)
        v = tip_low + rng.uniform(-0.08, 0.12) if k % 2 == 1 else tip_high + rng.uniform(-0.1, 0.05)
        bangs.append((u, v))
    bangs.append((-lock_in, 0.1))
    shadow = head([(u, v + 0.07) for u, v in bangs])
    p.overlay(shadow, _shade(skin, 0.8), face_mask)
    bang_pts, bang_mask = p.shape("hair", head(bangs), hair, hair_shade)
    band = rng.uniform(-0.75, -0.45)
    hl = _ellipse_local(0, band, 0.7, 0.08)
    p.overlay(head(hl), _shade(hair, 1.35), bang_mask, 200)
    for k in range(2, 2 * n_spikes - 1, 2):  # strand lines from the crown towards each valley
        u = lock_in - lock_in * k / n_spikes
        p.outline([head([(u * 0.6, -0.95)])[0], bang_pts[33 + k]], width=p.stroke * 0.7, closed=False)

    # a hand in front, sometimes
    if rng.random() < 0.25:
        hx, hy = rng.uniform(-1.4, 1.4), rng.uniform(1.6, 2.4)
        p.shape("skin", body(_ellipse_local(hx, hy, 0.35, 0.45, 24, rng.uniform(-0.5, 0.5))), skin, 0.25)

    image = np.asarray(p.image.resize((size, size), Image.Resampling.LANCZOS))
    lines = np.asarray(p.lines.resize((size, size), Image.Resampling.LANCZOS))
    return Portrait(image.copy(), rasterize(p.shapes, size), lines.copy(), p.shapes)


def _ellipse_local(
    u: float, v: float, ru: float, rv: float, n: int = 32, rot: float = 0.0
) -> list[tuple[float, float]]:
    return _ellipse(u, v, ru, rv, n, rot)


def portrait_id(seed: int, index: int) -> str:
    return f"s{seed}-{index:06d}"


def _jpeg(image: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_synth_shard(out: str, seed: int, size: int, start: int, stop: int, annotated: int) -> int:
    """Draw portraits ``start..stop-1`` into ``out`` in ``synth``'s layout; returns the count.

    ``out/labelme/<id>.{jpg,json}`` for indices below ``annotated``, ``out/images/<id>.jpg``
    for the rest, ``out/truth/<id>.png`` and ``out/lines/<id>.png`` for all. Deterministic:
    re-running a shard rewrites identical files.
    """
    from storage.location import Location
    from tasks.imageio import encode_png
    from tasks.labelme import polygons_to_json

    loc = Location(out)
    for i in range(start, stop):
        pid = portrait_id(seed, i)
        pt = draw_portrait(seed, i, size)
        if i < annotated:
            loc.write_bytes(f"labelme/{pid}.jpg", _jpeg(pt.image))
            loc.write_bytes(f"labelme/{pid}.json", polygons_to_json(pt.shapes, f"{pid}.jpg", size, size))
        else:
            loc.write_bytes(f"images/{pid}.jpg", _jpeg(pt.image))
        loc.write_bytes(f"truth/{pid}.png", encode_png(pt.mask))
        loc.write_bytes(f"lines/{pid}.png", encode_png(pt.lines))
    return stop - start
