"""Embedded default dataset: deterministic synthetic scenes with COCO annotations.

The generator draws 2-6 geometric objects (circles, squares, triangles, ellipses,
stars, hexagons) with varied colour, texture, scale and rotation on textured
backgrounds (gradients, fractal noise, stripes, checkers).  Every image has its own
size.  Annotations are written in COCO "instances" format so that Detectron2's
``load_coco_json`` (and pycocotools) read them directly.

Layout written under ``out_dir``::

    out_dir/
        train/000000.jpg ...
        val/000000.jpg ...
        annotations/instances_train.json
        annotations/instances_val.json
        manifest.json          # written last; marks a complete dataset

Design notes
------------
* **Masks are exact.**  Each object is a single simple polygon and its pixels are
  produced by rasterising *that same polygon* (coordinates rounded to 0.01 px, i.e.
  exactly the numbers stored in the json) with pycocotools, the rasteriser that
  Detectron2 and ``COCO.annToMask`` use.  So the drawn pixels, ``annToMask`` and
  Detectron2's ``polygons_to_bitmask`` agree pixel for pixel.  (``cv2.fillPoly``
  was not used for this: it fills the boundary inclusively and is offset by half a
  pixel relative to the COCO convention, e.g. a 40x30 px box fills 41x31 px.)
  Objects never overlap (a 2 px gap is kept between masks, and boxes overlap
  with IoU <= 0.1), so no visible-region bookkeeping is needed.
* ``bbox`` is the tight box ``[x, y, w, h]`` of the drawn pixels (pixel ``i`` spans
  ``[i, i+1)``); ``area`` is the polygon (shoelace) area.
* **Deterministic.**  Every image has its own ``numpy.random.Generator`` seeded
  from ``(seed, split, index)``, so identical arguments give byte-identical files
  (on the same library versions) and images don't depend on how many others are
  generated.  Nothing time- or host-dependent is written.
* **Atomic.**  Everything is written into a sibling temporary folder
  ``<out_dir>.tmp-XXXX`` (manifest last) which is then renamed to ``out_dir``; a
  killed generation therefore never looks complete.  Calling the generator again
  with identical arguments on a complete dataset is a cheap no-op; different
  arguments raise ``ValueError`` unless ``overwrite=True``.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

from ..utils.atomic_io import atomic_write_json

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "GENERATOR_VERSION",
    "SPLITS",
    "generate_synthetic_dataset",
    "synthetic_split_paths",
    "read_synthetic_manifest",
    "render_synthetic_scene",
]

logger = logging.getLogger(__name__)

#: Bump whenever the drawing code changes in a way that alters the output files.
GENERATOR_VERSION = "1.0"

SYNTHETIC_CATEGORIES: List[Dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "ellipse", "supercategory": "shape"},
    {"id": 5, "name": "star", "supercategory": "shape"},
    {"id": 6, "name": "hexagon", "supercategory": "shape"},
]

SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}

MANIFEST_NAME = "manifest.json"
_ENTROPY_SALT = 0x50C0D2  # mixed into every per-image seed

MIN_OBJECTS = 2
MAX_OBJECTS = 6
MIN_OBJ_FRAC = 0.15  # object extent relative to the shorter image side
MAX_OBJ_FRAC = 0.70
_SMALLEST_FRAC = 0.08  # floor when shrinking objects that do not fit
_MAX_BOX_IOU = 0.1
_GAP_PX = 2  # free pixels kept between object masks
_EDGE_MARGIN = 1.0  # polygons stay at least this far from the image border
_JPEG_QUALITY = 95
_MIN_IMAGE_SIDE = 48
_MAX_IMAGE_SIDE = 4096

_LICENSES = [
    {
        "id": 1,
        "name": "CC0 1.0 Universal (public domain dedication)",
        "url": "https://creativecommons.org/publicdomain/zero/1.0/",
    }
]


# ---------------------------------------------------------------------------
# Paths / manifest
# ---------------------------------------------------------------------------
def synthetic_split_paths(out_dir: str, split: str) -> Tuple[str, str]:
    """Return ``(json_path, image_root)`` of ``split`` ("train" or "val") under ``out_dir``.

    Pure path arithmetic: nothing is generated or checked.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown synthetic split {split!r}; expected one of {SPLITS}")
    return (
        os.path.join(out_dir, "annotations", f"instances_{split}.json"),
        os.path.join(out_dir, split),
    )


def read_synthetic_manifest(out_dir: str) -> Optional[dict]:
    """Return the manifest of a complete synthetic dataset in ``out_dir``, or None."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    try:
        with open(path, "r", encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _params(num_train, num_val, seed, min_size, max_size) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "min_size": min_size,
        "max_size": max_size,
    }


def _is_complete(out_dir: str, manifest: dict) -> bool:
    for split in SPLITS:
        json_path, image_root = synthetic_split_paths(out_dir, split)
        if not os.path.isfile(json_path):
            return False
        n = manifest.get("params", {}).get(f"num_{split}", -1)
        for i in range(n):
            if not os.path.isfile(os.path.join(image_root, _file_name(i))):
                return False
    return True


def _file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _val_id_base(num_train: int) -> int:
    base = 100000
    while base <= num_train:
        base *= 10
    return base


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _hsv(rng: np.random.Generator, s_range, v_range) -> np.ndarray:
    h = rng.random()
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
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


def _object_colours(rng: np.random.Generator, bg_mean: np.ndarray):
    """Primary colour well separated from the local background, plus a partner."""
    best, best_d = None, -1.0
    for _ in range(24):
        c = _hsv(rng, (0.35, 1.0), (0.3, 1.0))
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
        target = _hsv(rng, (0.3, 1.0), (0.3, 1.0))
    c2 = best + rng.uniform(0.35, 0.7) * (target - best)
    return best, c2.astype(np.float32)


def _object_fill(rng: np.random.Generator, h: int, w: int, c0, c1) -> np.ndarray:
    side = max(4, min(h, w))
    kind = int(rng.integers(5))
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
    if name in ("circle", "ellipse"):
        n = int(np.clip(math.ceil(math.pi * extent_px / 2.5), 24, 96))
        a = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        ry = 1.0 if name == "circle" else rng.uniform(0.4, 0.72)
        return np.stack([np.cos(a), ry * np.sin(a)], axis=1)
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
    if name == "hexagon":
        a = np.linspace(0.0, 2 * math.pi, 6, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    raise ValueError(f"unknown shape {name!r}")


def _shape_polygon(rng, name: str, extent_px: float, h: int, w: int) -> np.ndarray:
    """Rotated, scaled and translated polygon whose larger box side is ``extent_px``."""
    poly = _unit_polygon(rng, name, extent_px)
    theta = rng.uniform(0.0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    poly = poly @ np.array([[c, s], [-s, c]])
    lo = poly.min(axis=0)
    span = poly.max(axis=0) - lo
    poly = (poly - lo) * (extent_px / float(span.max()))
    size = poly.max(axis=0)
    free_x = max(0.0, w - 2 * _EDGE_MARGIN - size[0])
    free_y = max(0.0, h - 2 * _EDGE_MARGIN - size[1])
    offset = np.array([_EDGE_MARGIN + rng.uniform(0, free_x), _EDGE_MARGIN + rng.uniform(0, free_y)])
    return np.round(poly + offset, 2)


def _rasterize(flat_poly: List[float], h: int, w: int):
    """Rasterise with pycocotools, exactly like ``COCO.annToMask`` / Detectron2's
    ``polygons_to_bitmask``.  Returns ``(mask (h, w) bool, tight int box x0, y0, x1, y1)``."""
    rle = mask_util.merge(mask_util.frPyObjects([flat_poly], h, w))
    x, y, bw, bh = (int(v) for v in mask_util.toBbox(rle))
    return mask_util.decode(rle).astype(bool), (x, y, x + bw, y + bh)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) * 0.5)


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
    """Place 2-6 non-overlapping objects; returns [{category, polygon, mask, bbox}]."""
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
                poly = _shape_polygon(rng, cat["name"], f * side, h, w)
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


def render_synthetic_scene(seed: int, split: str, index: int, min_size: int, max_size: int):
    """Render one scene deterministically.

    Returns ``(rgb_uint8_image, objects)``; each object is a dict with ``category``
    (a SYNTHETIC_CATEGORIES entry), ``polygon`` (N, 2) float array in COCO pixel
    coordinates, ``mask`` (H, W) bool and ``bbox`` [x, y, w, h].
    """
    rng = _image_rng(seed, split, index)
    h = int(rng.integers(min_size, max_size + 1))
    w = int(rng.integers(min_size, max_size + 1))
    img = _background(rng, h, w)
    objects = _layout(rng, h, w)
    for obj in objects:
        x, y, bw, bh = (int(v) for v in obj["bbox"])
        crop = img[y : y + bh, x : x + bw]
        m = obj["mask"][y : y + bh, x : x + bw]
        bg_mean = crop[m].mean(axis=0)
        c0, c1 = _object_colours(rng, bg_mean)
        fill = _object_fill(rng, bh, bw, c0, c1)
        crop[m] = fill[m]
    sigma = rng.uniform(0.0, 4.0)
    if sigma > 0.5:
        img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


# ---------------------------------------------------------------------------
# Dataset generation
# ---------------------------------------------------------------------------
def _generate_split(root: str, split: str, count: int, params: dict, id_base: int) -> dict:
    json_rel = os.path.join("annotations", f"instances_{split}.json")
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image_id = id_base + index + 1
        rgb, objects = render_synthetic_scene(
            params["seed"], split, index, params["min_size"], params["max_size"]
        )
        h, w = rgb.shape[:2]
        file_name = _file_name(index)
        ok = cv2.imwrite(
            os.path.join(image_dir, file_name),
            cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
            [int(cv2.IMWRITE_JPEG_QUALITY), _JPEG_QUALITY],
        )
        if not ok:
            raise OSError(f"cv2.imwrite failed for {os.path.join(image_dir, file_name)}")
        if (index + 1) % 1000 == 0:
            logger.info("Synthetic %s: %d/%d images", split, index + 1, count)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "license": 1})
        for k, obj in enumerate(objects):
            annotations.append(
                {
                    "id": image_id * 100 + k + 1,
                    "image_id": image_id,
                    "category_id": obj["category"]["id"],
                    "bbox": obj["bbox"],
                    "area": round(_polygon_area(obj["polygon"]), 2),
                    "iscrowd": 0,
                    "segmentation": [obj["flat"]],
                }
            )
    coco = {
        "info": {
            "description": f"SoCo-D2 synthetic shapes dataset ({split} split)",
            "version": GENERATOR_VERSION,
            "contributor": "soco_d2.data.synthetic (procedurally generated)",
            "seed": params["seed"],
        },
        "licenses": _LICENSES,
        "images": images,
        "annotations": annotations,
        "categories": SYNTHETIC_CATEGORIES,
    }
    atomic_write_json(os.path.join(root, json_rel), coco, separators=(",", ":"))
    return {
        "num_images": len(images),
        "num_annotations": len(annotations),
        "json": json_rel,
        "image_root": split,
        "first_image_id": id_base + 1,
    }


def _check_args(num_train, num_val, seed, min_size, max_size) -> None:
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed),
                        ("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if num_train + num_val == 0:
        raise ValueError("num_train + num_val must be > 0")
    if not _MIN_IMAGE_SIDE <= min_size <= max_size <= _MAX_IMAGE_SIDE:
        raise ValueError(
            f"need {_MIN_IMAGE_SIDE} <= min_size <= max_size <= {_MAX_IMAGE_SIDE}, "
            f"got min_size={min_size}, max_size={max_size}"
        )


def _result(out_dir: str) -> Dict[str, Tuple[str, str]]:
    return {split: synthetic_split_paths(out_dir, split) for split in SPLITS}


def generate_synthetic_dataset(
    out_dir: str,
    num_train: int = 200,
    num_val: int = 50,
    seed: int = 0,
    min_size: int = 224,
    max_size: int = 320,
    overwrite: bool = False,
) -> dict:
    """Generate the synthetic COCO-style dataset into ``out_dir`` (see module docstring).

    Returns ``{"train": (json_path, image_root), "val": (json_path, image_root)}``
    (paths are ``out_dir`` joined with relative parts, as ``synthetic_split_paths``).

    * ``out_dir`` holds a complete dataset made with the same arguments: no-op.
    * ``out_dir`` holds a dataset made with other arguments: ``ValueError`` unless
      ``overwrite=True``, which regenerates it (``overwrite=True`` always regenerates).
    * ``out_dir`` exists, is not empty and is not a synthetic dataset: ``ValueError``
      even with ``overwrite=True`` (we never delete folders we did not create).
    """
    _check_args(num_train, num_val, seed, min_size, max_size)
    num_train, num_val, seed = int(num_train), int(num_val), int(seed)
    min_size, max_size = int(min_size), int(max_size)
    params = _params(num_train, num_val, seed, min_size, max_size)
    out_dir = os.path.normpath(out_dir)

    replace_existing = False
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir!r} exists and is not a folder")
        manifest = read_synthetic_manifest(out_dir)
        if manifest is None:
            if os.listdir(out_dir):
                raise ValueError(
                    f"Folder {out_dir!r} exists, is not empty and holds no synthetic dataset "
                    f"({MANIFEST_NAME} missing or unreadable); refusing to write into it. "
                    "Choose another folder or remove it."
                )
        elif manifest.get("params") == params and not overwrite:
            if _is_complete(out_dir, manifest):
                logger.info("Synthetic dataset in %s is up to date; nothing to do.", out_dir)
                return _result(out_dir)
            logger.warning("Synthetic dataset in %s is incomplete; regenerating it.", out_dir)
        elif not overwrite:
            raise ValueError(
                f"Folder {out_dir!r} already holds a synthetic dataset generated with different "
                f"arguments ({manifest.get('params')}) than requested ({params}). "
                "Pass overwrite=True (--overwrite) or choose another folder."
            )
        replace_existing = True

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    start = time.perf_counter()
    try:
        os.makedirs(os.path.join(tmp_root, "annotations"))
        splits_info = {}
        for split, count, id_base in (
            ("train", num_train, 0),
            ("val", num_val, _val_id_base(num_train)),
        ):
            splits_info[split] = _generate_split(tmp_root, split, count, params, id_base)
            logger.info(
                "Synthetic %s: %d images, %d annotations",
                split, splits_info[split]["num_images"], splits_info[split]["num_annotations"],
            )
        manifest = {
            "name": "soco_synthetic",
            "params": params,
            "splits": splits_info,
            "categories": SYNTHETIC_CATEGORIES,
        }
        atomic_write_json(os.path.join(tmp_root, MANIFEST_NAME), manifest, separators=(",", ":"))  # last
        _move_into_place(tmp_root, out_dir, params, replace_existing)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    logger.info(
        "Generated synthetic dataset (%d train + %d val images) in %s in %.1fs",
        num_train, num_val, out_dir, time.perf_counter() - start,
    )
    return _result(out_dir)


def _move_into_place(tmp_root: str, out_dir: str, params: dict, replace_existing: bool) -> None:
    old = None
    if replace_existing and os.path.isdir(out_dir):
        old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=os.path.dirname(tmp_root))
        os.rmdir(old)
        os.rename(out_dir, old)
    elif os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)  # empty placeholder folder
    try:
        os.rename(tmp_root, out_dir)
    except OSError:
        manifest = read_synthetic_manifest(out_dir)
        if manifest is not None and manifest.get("params") == params and _is_complete(out_dir, manifest):
            # A concurrent generation with the same arguments finished first: same files.
            shutil.rmtree(tmp_root, ignore_errors=True)
        else:
            if old is not None and not os.path.lexists(out_dir):
                os.rename(old, out_dir)  # put the previous dataset back
                old = None
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
