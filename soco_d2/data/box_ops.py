"""Geometry of views and boxes, shared by the methods' mappers: random resized crops, fast
antialiased resizing, cutting a view out of a (possibly reduced) decoded image, box jitter,
mapping, flipping and clipping.

Boxes are float32 numpy arrays (N, 4) in XYXY, continuous pixel coordinates (pixel i spans
[i, i+1)). A crop is ``(x0, y0, w, h)`` in the pixels of the image it is cut from. Randomness
comes from numpy's global RNG, which Detectron2 seeds per data-loader worker (the training
loader seeds it per sample, see :mod:`.sample_stream`).
"""
import math
from typing import Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "random_resized_crop",
    "inside_fraction",
    "jitter_boxes",
    "trimmed_extent",
    "resize_antialiased",
    "cut_view",
    "crop_resize_boxes",
    "hflip_boxes",
    "clip_boxes",
]


def random_resized_crop(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> Tuple[int, int, int, int]:
    """Parameters of a random resized crop, with torchvision ``RandomResizedCrop`` semantics.

    Up to 10 draws of (area fraction in ``scale``, log-uniform aspect ratio w/h in ``ratio``);
    the first crop that fits is placed uniformly. Otherwise fall back to a central crop of the
    whole image, narrowed to the nearest allowed aspect ratio.

    Returns:
        ``(x0, y0, w, h)`` integers with ``0 < w <= width`` and ``0 < h <= height``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    draws = np.random.random_sample((10, 2))
    for u_area, u_ratio in draws:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(np.random.randint(0, height - h + 1))
            x0 = int(np.random.randint(0, width - w + 1))
            return x0, y0, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, max(w, 1), max(h, 1)


def inside_fraction(boxes: np.ndarray, crop: Sequence[float]) -> np.ndarray:
    """Fraction of each box's area that lies inside ``crop = (x0, y0, w, h)``; (N,) float32."""
    x0, y0, w, h = crop
    iw = np.minimum(boxes[:, 2], x0 + w) - np.maximum(boxes[:, 0], x0)
    ih = np.minimum(boxes[:, 3], y0 + h) - np.maximum(boxes[:, 1], y0)
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area, 1e-6)


def _halvings(w: int, h: int, out_w: int, out_h: int) -> int:
    k = 0
    while w >= out_w << (k + 1) and h >= out_h << (k + 1):
        k += 1
    return k


def trimmed_extent(w: int, h: int, out_w: int, out_h: int) -> Tuple[int, int]:
    """The part of a ``w`` x ``h`` image that :func:`resize_antialiased` uses: it is trimmed on
    the right and bottom to a multiple of ``2**k`` for its ``k`` exact halvings."""
    m = 1 << _halvings(w, h, out_w, out_h)
    return w - w % m, h - h % m


def resize_antialiased(src: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Downscale with antialiasing at a fraction of ``INTER_AREA``'s cost.

    Exact 2x2 averaging (OpenCV's SIMD ``INTER_AREA`` path; only the 2x2 case is fast) while
    both sides shrink by at least 2, then bilinear for the remaining factor, which is below 2
    (through twice the output size and one more 2x2 average when only one side still shrinks by
    2 or more). Uses ``src[:h', :w']`` with ``(w', h') = trimmed_extent(...)``. Always returns
    a new array.
    """
    tw, th = trimmed_extent(src.shape[1], src.shape[0], out_w, out_h)
    src = src[:th, :tw]
    while src.shape[1] >= 2 * out_w and src.shape[0] >= 2 * out_h:
        src = cv2.resize(src, (src.shape[1] // 2, src.shape[0] // 2), interpolation=cv2.INTER_AREA)
    h, w = src.shape[:2]
    if (w, h) == (out_w, out_h):
        return src.copy()  # never a view of the input: views are modified in place later
    if w >= 2 * out_w or h >= 2 * out_h:
        src = cv2.resize(src, (2 * out_w, 2 * out_h), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(src, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return cv2.resize(src, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def cut_view(img: np.ndarray, crop, sx: float, sy: float, size: int):
    """Cut ``crop = (x0, y0, w, h)`` (original pixels) out of ``img`` (decoded at scale sx, sy)
    and resize it to ``size`` x ``size`` with :func:`resize_antialiased`.

    Returns:
        ``(view, used)``: the view and the region actually used (snapped to decoded pixels and
        trimmed), in original pixels; map boxes with ``used`` so they stay on the content.
    """
    hd, wd = img.shape[:2]
    x0 = min(max(int(round(crop[0] * sx)), 0), wd - 1)
    y0 = min(max(int(round(crop[1] * sy)), 0), hd - 1)
    x1 = min(max(int(round((crop[0] + crop[2]) * sx)), x0 + 1), wd)
    y1 = min(max(int(round((crop[1] + crop[3]) * sy)), y0 + 1), hd)
    w, h = trimmed_extent(x1 - x0, y1 - y0, size, size)
    x1, y1 = x0 + w, y0 + h
    view = resize_antialiased(img[y0:y1, x0:x1], size, size)
    return view, (x0 / sx, y0 / sy, (x1 - x0) / sx, (y1 - y0) / sy)


def jitter_boxes(boxes: np.ndarray, ratio: float) -> np.ndarray:
    """Jitter every box (Sec. 2): ``x1 += U(-r,r) w``, ``y1 += U(-r,r) h``, ``w *= 1+U(-r,r)``,
    ``h *= 1+U(-r,r)``, with ``r = ratio``. Not clipped; returns a new float32 array."""
    u = np.random.uniform(-ratio, ratio, size=(len(boxes), 4)).astype(np.float32)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    x1 = boxes[:, 0] + u[:, 0] * w
    y1 = boxes[:, 1] + u[:, 1] * h
    return np.stack(
        [x1, y1, x1 + w * (1 + u[:, 2]), y1 + h * (1 + u[:, 3])], axis=1
    ).astype(np.float32)


def crop_resize_boxes(
    boxes: np.ndarray, crop: Sequence[float], out_w: float, out_h: float
) -> np.ndarray:
    """Map boxes from image pixels into a view made by cropping ``crop = (x0, y0, w, h)``
    (floats allowed) and resizing it to ``out_w`` x ``out_h``. Not clipped."""
    x0, y0, w, h = crop
    sx, sy = out_w / w, out_h / h
    offset = np.array([x0, y0, x0, y0], dtype=np.float32)
    factor = np.array([sx, sy, sx, sy], dtype=np.float32)
    return (boxes - offset) * factor


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes after flipping an image of ``width`` pixels horizontally."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def clip_boxes(boxes: np.ndarray, width: float, height: float, min_size: float = 1.0):
    """Clip boxes to ``[0, width] x [0, height]`` and widen any side shorter than ``min_size``
    (about its centre, kept inside the image), so no box is degenerate. Returns a new array."""
    out = np.empty_like(boxes)
    for lo, hi, size in ((0, 2, width), (1, 3, height)):
        # np.minimum/np.maximum: np.clip's overhead dominates on a handful of boxes.
        a = np.minimum(np.maximum(boxes[:, lo], 0), size)
        b = np.minimum(np.maximum(boxes[:, hi], 0), size)
        short = (b - a) < min_size
        if short.any():
            m = min(min_size, size)
            start = np.clip((a[short] + b[short] - m) / 2, 0, size - m)
            a[short], b[short] = start, start + m
        out[:, lo], out[:, hi] = a, b
    return out
