"""One synthetic scene: 1-4 non-overlapping shapes with exact masks on a textured background.

:func:`render_synthetic_scene` is a pure function of ``(seed, split, index)``, the size
range and the ``appearance`` setting; the pixels are drawn by :mod:`.drawing`, and every mask
is the pycocotools rasterisation of the polygon stored in the json (see
:mod:`soco_d2.data.synthetic`).
"""

from __future__ import annotations

from typing import Dict, List

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .drawing import FILL_KINDS, background, fill_kind, object_colours, object_fill, shape_polygon

__all__ = ["APPEARANCES", "SYNTHETIC_CATEGORIES", "render_synthetic_scene"]

# Four shapes that stay distinct at 30 px. With appearance "independent" colour and texture are
# drawn independently of the category, so only the shape tells them apart; with "category" each
# category also has its own colour distribution and preferred texture (CATEGORY_APPEARANCE).
SYNTHETIC_CATEGORIES: List[Dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]

#: How an object's colour and texture are drawn: "category" (per-category distributions below,
#: as natural categories differ in appearance as well as shape), "texture" (the category's
#: preferred fill as under "category", but colour uniform: texture and shape carry the class,
#: colour only the identity of one object) or "independent" (of the category: the scenes of
#: generator 2.0, kept byte-identical so earlier figures reproduce).
APPEARANCES = ("category", "texture", "independent")

# Per category (by name): the centre of its hue distribution (HSV hue in turns) and its
# preferred fill kind (a FILL_KINDS name). The centres are evenly spaced, a quarter turn
# apart (red, chartreuse, cyan, violet), so that every category has two equally close
# neighbours and a quarter turn is 2.5x SoCo's view hue jitter (0.1): coarse hue survives
# the augmentation. The four preferred fills are distinct; "solid" is nobody's, since it
# shows colour only and no texture, so it carries no class.
CATEGORY_APPEARANCE = {
    "circle": {"hue": 0.00, "fill": "dots"},
    "square": {"hue": 0.25, "fill": "stripes"},
    "triangle": {"hue": 0.50, "fill": "gradient"},
    "star": {"hue": 0.75, "fill": "noise"},
}
# Standard deviation of an object's hue around its category's centre (turns, wrapped normal).
# Neighbouring centres lie ~2 of these apart, so 30% of the drawn hues fall nearer a
# neighbour's centre than their own. Measured on ~1000 rendered objects: the nearest category
# to the mean hue of an object's pixels is its own 71% of the time, and a 10-NN on their mean
# RGB is right 69% of the time (0.10 gave 82% / 79%, a cue that a random trunk's features may
# already carry; 0.15 gave 61% / 58%). So colour helps but does not give the class away. It is
# also a little above SoCo's view hue jitter (0.1): the augmentation spans about the
# within-class spread.
CATEGORY_HUE_SPREAD = 0.12
# Probability of the category's preferred fill; otherwise one of the four others, uniformly
# (0.1 each). Fill alone names the class at best (4 * 0.6 + 0.1) / 4 = 62.5% of the time,
# so texture helps but the shape is still needed for the rest.
PREFERRED_FILL_PROB = 0.6

_SPLIT_CODE = {"train": 0, "val": 1}
_ENTROPY_SALT = 0x50C0D2  # mixed into every per-image seed

MIN_OBJECTS = 1
MAX_OBJECTS = 4
MIN_OBJ_FRAC = 0.25  # object extent relative to the shorter image side
MAX_OBJ_FRAC = 0.60
# Shapes keep their canonical pose up to this rotation, as natural categories have one
# (people and cars upright). Without it a class is "this shape in any orientation", which no
# view of SoCo (crops, scale, flips, colour) relates: the probe then stayed at chance for every
# label-free trunk tried (docs/evidence.md, "SoCo").
MAX_ROTATION_DEG = 15.0
_SMALLEST_FRAC = 0.08  # floor when shrinking objects that do not fit
_MAX_BOX_IOU = 0.1
_GAP_PX = 2  # free pixels kept between object masks


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------
def _rasterize(flat_poly: List[float], h: int, w: int):
    """Rasterise with pycocotools, exactly like ``COCO.annToMask`` / Detectron2's
    ``polygons_to_bitmask``.  Returns ``(mask (h, w) bool, tight int box x0, y0, x1, y1)``."""
    rle = mask_util.merge(mask_util.frPyObjects([flat_poly], h, w))
    x, y, bw, bh = (int(v) for v in mask_util.toBbox(rle))
    return mask_util.decode(rle).astype(bool), (x, y, x + bw, y + bh)


def _box_iou(a, b) -> float:
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    iw = min(ax1 + aw, bx1 + bw) - max(ax1, bx1)
    ih = min(ay1 + ah, by1 + bh) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _layout(rng: np.random.Generator, h: int, w: int) -> List[dict]:
    """Place 1-4 non-overlapping objects; returns [{category, polygon, mask, bbox}]."""
    side = min(h, w)
    gap_kernel = np.ones((2 * _GAP_PX + 1, 2 * _GAP_PX + 1), np.uint8)
    for _round in range(50):
        n_target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        fracs = np.sort(rng.uniform(MIN_OBJ_FRAC, MAX_OBJ_FRAC, n_target))[::-1]
        cats = rng.integers(len(SYNTHETIC_CATEGORIES), size=n_target)
        occupied = np.zeros((h, w), bool)
        objects: List[dict] = []
        for frac, cat_idx in zip(fracs, cats):
            cat = SYNTHETIC_CATEGORIES[int(cat_idx)]
            for attempt in range(40):
                # Shrink gradually when the object keeps colliding.
                f = max(_SMALLEST_FRAC, float(frac) * (0.9 ** (attempt // 5)))
                poly = shape_polygon(rng, cat["name"], f * side, h, w, MAX_ROTATION_DEG)
                lo, hi = poly.min(axis=0), poly.max(axis=0)
                approx = [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]
                if any(_box_iou(approx, o["bbox"]) > _MAX_BOX_IOU + 0.05 for o in objects):
                    continue  # cheap early rejection before rasterising
                flat = poly.reshape(-1).tolist()
                mask, (x0, y0, x1, y1) = _rasterize(flat, h, w)
                if x1 - x0 < 4 or y1 - y0 < 4:
                    continue
                if occupied[y0:y1, x0:x1][mask[y0:y1, x0:x1]].any():
                    continue
                bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
                if any(_box_iou(bbox, o["bbox"]) > _MAX_BOX_IOU for o in objects):
                    continue
                grown = cv2.dilate(mask.view(np.uint8), gap_kernel)
                occupied |= grown.astype(bool)
                objects.append(
                    {"category": cat, "polygon": poly, "flat": flat, "mask": mask, "bbox": bbox}
                )
                break
        if len(objects) >= MIN_OBJECTS:
            return objects
    raise RuntimeError(f"could not place {MIN_OBJECTS} objects in a {w}x{h} image")


# ---------------------------------------------------------------------------
# One scene
# ---------------------------------------------------------------------------
def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_ENTROPY_SALT, seed, _SPLIT_CODE[split], index]))


def _object_style(appearance: str, category: Dict):
    """``(hue, preferred fill index, its probability)`` for :mod:`.drawing`'s colour and fill
    draws; all None under "independent" (uniform hue, uniform fill), hue None under "texture"."""
    if appearance == "independent":
        return None, None, None
    style = CATEGORY_APPEARANCE[category["name"]]
    hue = None if appearance == "texture" else (style["hue"], CATEGORY_HUE_SPREAD)
    return hue, FILL_KINDS.index(style["fill"]), PREFERRED_FILL_PROB


def render_synthetic_scene(seed: int, split: str, index: int, min_size: int, max_size: int,
                           appearance: str = "category"):
    """Render one scene deterministically.

    Returns ``(rgb_uint8_image, objects)``; each object is a dict with ``category``
    (a SYNTHETIC_CATEGORIES entry), ``polygon`` (N, 2) float array in COCO pixel
    coordinates, ``mask`` (H, W) bool, ``bbox`` [x, y, w, h] and ``fill`` (the FILL_KINDS
    name it was drawn with). ``appearance``: one of APPEARANCES.
    """
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    rng = _image_rng(seed, split, index)
    h = int(rng.integers(min_size, max_size + 1))
    w = int(rng.integers(min_size, max_size + 1))
    img = background(rng, h, w)
    objects = _layout(rng, h, w)
    for obj in objects:
        x, y, bw, bh = (int(v) for v in obj["bbox"])
        crop = img[y : y + bh, x : x + bw]
        m = obj["mask"][y : y + bh, x : x + bw]
        bg_mean = crop[m].mean(axis=0)
        hue, preferred, p_preferred = _object_style(appearance, obj["category"])
        c0, c1 = object_colours(rng, bg_mean, hue)
        kind = fill_kind(rng, preferred, p_preferred)
        obj["fill"] = FILL_KINDS[kind]
        fill = object_fill(rng, bh, bw, c0, c1, kind)
        crop[m] = fill[m]
    sigma = rng.uniform(0.0, 4.0)
    if sigma > 0.5:
        img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects
