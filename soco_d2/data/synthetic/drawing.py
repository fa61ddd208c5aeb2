"""Pixels and polygons of the synthetic scenes (see :mod:`soco_d2.data.synthetic`).

Colour helpers and textures (fractal noise, stripes, checkers, gradients, dots), backgrounds,
object colours and fills, and the shapes' polygons. Object colours and fill kinds are drawn
either independently of anything (``hue=None`` / ``preferred=None``: the scenes of generator
2.0) or from a distribution that :mod:`.scene` chooses per category. Every function draws from
the numpy ``Generator`` it is given, in a fixed order, so a scene is a function of its seed:
changing the order or number of draws changes the output files (bump ``GENERATOR_VERSION`` in
``dataset.py``).
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

__all__ = [
    "EDGE_MARGIN", "FILL_KINDS", "background", "fill_kind", "object_colours", "object_fill",
    "shape_polygon",
]

EDGE_MARGIN = 1.0  # polygons stay at least this far from the image border

#: The kinds of object fill, by index as :func:`object_fill` takes them.
FILL_KINDS = ("solid", "stripes", "dots", "noise", "gradient")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _hsv(rng: np.random.Generator, s_range, v_range, hue=None) -> np.ndarray:
    """A random colour (RGB float32, 0-255); its hue is uniform, or with ``hue=(centre,
    spread)`` normal around ``centre`` with standard deviation ``spread`` (in turns, wrapped)."""
    h = rng.random() if hue is None else rng.normal(hue[0], hue[1]) % 1.0
    s = rng.uniform(*s_range)
    v = rng.uniform(*v_range)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours c0 -> c1 with weight map t (h, w) in [0, 1] -> (h, w, 3)."""
    return c0[None, None, :] + t[..., None] * (c1 - c0)[None, None, :]


def _rotated_coords(h: int, w: int, angle: float):
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    u = xs * c + ys * s
    v = ys * c - xs * s
    return u, v


def _normalise(t: np.ndarray) -> np.ndarray:
    lo, hi = float(t.min()), float(t.max())
    if hi - lo < 1e-6:
        return np.zeros_like(t)
    return (t - lo) * (1.0 / (hi - lo))


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int) -> np.ndarray:
    """Smooth value noise summed over octaves (Perlin-like), normalised to [0, 1]."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    longest = max(h, w)
    for o in range(octaves):
        n_cells = cells * (2 ** o)
        gy = max(2, int(round(n_cells * h / longest)) + 2)
        gx = max(2, int(round(n_cells * w / longest)) + 2)
        grid = rng.random((gy, gx), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.5
    return _normalise(out)


def _stripes(rng, h, w, period, sharp=None):
    u, _ = _rotated_coords(h, w, rng.uniform(0, math.pi))
    t = 0.5 + 0.5 * np.sin(u * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))
    if sharp is None:
        sharp = rng.uniform(1.0, 8.0)
    return np.clip((t - 0.5) * sharp + 0.5, 0.0, 1.0).astype(np.float32)


def _checkers(rng, h, w, period):
    u, v = _rotated_coords(h, w, rng.uniform(0, math.pi / 2))
    off = rng.uniform(0, period, 2)
    t = (np.floor((u + off[0]) / period) + np.floor((v + off[1]) / period)) % 2
    return t.astype(np.float32)


def _linear_gradient(rng, h, w):
    u, _ = _rotated_coords(h, w, rng.uniform(0, 2 * math.pi))
    return _normalise(u)


def _radial_gradient(rng, h, w):
    cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
    ys = np.arange(h, dtype=np.float32)[:, None] - cy
    xs = np.arange(w, dtype=np.float32)[None, :] - cx
    return _normalise(np.sqrt(ys * ys + xs * xs))


def _dots(rng, h, w, period, radius):
    u, v = _rotated_coords(h, w, rng.uniform(0, math.pi / 2))
    off = rng.uniform(0, period, 2)
    du = np.mod(u + off[0], period) - period / 2
    dv = np.mod(v + off[1], period) - period / 2
    d = np.sqrt(du * du + dv * dv)
    return np.clip(radius + 0.5 - d, 0.0, 1.0).astype(np.float32)  # 1 inside a dot (anti-aliased)


# ---------------------------------------------------------------------------
# Backgrounds and fills
# ---------------------------------------------------------------------------
def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0 = _hsv(rng, (0.0, 0.7), (0.2, 0.95))
    c1 = _hsv(rng, (0.0, 0.7), (0.2, 0.95))
    kind = int(rng.integers(5))
    if kind == 0:  # smooth gradient, linear or radial, 2-3 colours
        t = _linear_gradient(rng, h, w) if rng.random() < 0.6 else _radial_gradient(rng, h, w)
        img = _mix(c0, c1, t)
        if rng.random() < 0.5:
            img = _mix_images(img, _mix(c1, _hsv(rng, (0.0, 0.7), (0.2, 0.95)), _linear_gradient(rng, h, w)), 0.4)
    elif kind == 1:  # low-frequency fractal noise, 2-3 colours
        img = _mix(c0, c1, _fractal_noise(rng, h, w, rng.uniform(1.5, 5.0), int(rng.integers(2, 5))))
        if rng.random() < 0.5:
            c2 = _hsv(rng, (0.0, 0.7), (0.2, 0.95))
            t2 = _fractal_noise(rng, h, w, rng.uniform(1.5, 4.0), 3)
            img = img + (t2[..., None] ** 2) * (c2 - img)
    elif kind == 2:  # stripes
        img = _mix(c0, c1, _stripes(rng, h, w, rng.uniform(6.0, 40.0)))
    elif kind == 3:  # checkers
        img = _mix(c0, c1, _checkers(rng, h, w, rng.uniform(8.0, 48.0)))
    else:  # noise blended with a gradient
        t = 0.5 * _fractal_noise(rng, h, w, rng.uniform(2.0, 8.0), 4) + 0.5 * _linear_gradient(rng, h, w)
        img = _mix(c0, c1, _normalise(t))

    # Low-frequency illumination variation, sometimes.
    if rng.random() < 0.6:
        light = _fractal_noise(rng, h, w, rng.uniform(1.0, 3.0), 2)
        img = img * (1.0 + rng.uniform(0.1, 0.35) * (light[..., None] - 0.5))
    return img.astype(np.float32)


def _mix_images(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    return a * (1.0 - alpha) + b * alpha


def object_colours(rng: np.random.Generator, bg_mean: np.ndarray, hue=None):
    """Primary colour well separated from the local background, plus a partner (white, black
    or another colour). ``hue``: None (uniform hues) or ``(centre, spread)`` for both colours,
    as :func:`_hsv` takes it."""
    best, best_d = None, -1.0
    for _ in range(24):
        c = _hsv(rng, (0.35, 1.0), (0.3, 1.0), hue)
        d = float(np.linalg.norm(c - bg_mean))
        if d > best_d:
            best, best_d = c, d
        if d > 110.0:
            break
    partner_kind = int(rng.integers(3))
    if partner_kind == 0:
        target = np.full(3, 255.0, np.float32)
    elif partner_kind == 1:
        target = np.zeros(3, np.float32)
    else:
        target = _hsv(rng, (0.3, 1.0), (0.3, 1.0), hue)
    c2 = best + rng.uniform(0.35, 0.7) * (target - best)
    return best, c2.astype(np.float32)


def fill_kind(rng: np.random.Generator, preferred=None, p_preferred: float = 1.0) -> int:
    """Index into FILL_KINDS: uniform (``preferred=None``), or ``preferred`` with probability
    ``p_preferred`` and one of the other kinds, uniformly, otherwise."""
    if preferred is None:
        return int(rng.integers(len(FILL_KINDS)))
    if rng.random() < p_preferred:
        return int(preferred)
    others = [k for k in range(len(FILL_KINDS)) if k != preferred]
    return others[int(rng.integers(len(others)))]


def object_fill(rng: np.random.Generator, h: int, w: int, c0, c1, kind: int) -> np.ndarray:
    """The object's pixels (h, w, 3) in colours c0 / c1 with fill FILL_KINDS[kind], shaded."""
    side = max(4, min(h, w))
    if kind == 0:  # solid
        img = np.broadcast_to(c0, (h, w, 3)).astype(np.float32)
    elif kind == 1:  # stripes
        img = _mix(c0, c1, _stripes(rng, h, w, rng.uniform(max(3.0, side / 12), max(4.0, side / 3))))
    elif kind == 2:  # dots
        period = rng.uniform(max(4.0, side / 10), max(5.0, side / 3.5))
        img = _mix(c0, c1, _dots(rng, h, w, period, period * rng.uniform(0.18, 0.38)))
    elif kind == 3:  # noise
        img = _mix(c0, c1, _fractal_noise(rng, h, w, rng.uniform(2.0, 6.0), 3))
    else:  # gradient
        img = _mix(c0, c1, _linear_gradient(rng, h, w))
    # Directional shading for some relief.
    shade = _linear_gradient(rng, h, w)
    img = img * (1.0 + rng.uniform(0.0, 0.35) * (shade[..., None] - 0.5))
    return img


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------
def _unit_polygon(rng: np.random.Generator, name: str, extent_px: float) -> np.ndarray:
    """Polygon (N, 2) of the shape roughly in [-1, 1]^2, before rotation/scaling."""
    if name == "circle":
        n = int(np.clip(math.ceil(math.pi * extent_px / 2.5), 24, 96))
        a = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if name == "triangle":
        a = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-10, 10, 3))
        r = rng.uniform(0.85, 1.0, 3)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if name == "star":
        k = 5
        a = np.linspace(0.0, 2 * math.pi, 2 * k, endpoint=False)
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.42, 0.55))
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    raise ValueError(f"unknown shape {name!r}")


def shape_polygon(rng, name: str, extent_px: float, h: int, w: int,
                  max_rotation_deg: float = 180.0) -> np.ndarray:
    """Rotated (uniformly in +-``max_rotation_deg`` about the shape's canonical pose), scaled
    and translated polygon whose larger box side is ``extent_px``."""
    poly = _unit_polygon(rng, name, extent_px)
    theta = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    c, s = math.cos(theta), math.sin(theta)
    poly = poly @ np.array([[c, s], [-s, c]])
    lo = poly.min(axis=0)
    span = poly.max(axis=0) - lo
    poly = (poly - lo) * (extent_px / float(span.max()))
    size = poly.max(axis=0)
    free_x = max(0.0, w - 2 * EDGE_MARGIN - size[0])
    free_y = max(0.0, h - 2 * EDGE_MARGIN - size[1])
    offset = np.array([EDGE_MARGIN + rng.uniform(0, free_x), EDGE_MARGIN + rng.uniform(0, free_y)])
    return np.round(poly + offset, 2)
