"""SoCo-specific view geometry (Sec. 2-3): which proposals a crop shows, and which FPN level
pools each box.

Boxes and crops as in :mod:`soco_d2.data.box_ops` (float32 XYXY numpy arrays; crops
``(x0, y0, w, h)``). Randomness comes from numpy's global RNG.
"""
import math
from typing import Sequence, Tuple

import numpy as np
import torch

from ...data.box_ops import inside_fraction, random_resized_crop
from ...data.proposals.selective_search import BoxFilter

__all__ = ["select_in_crop", "assign_levels", "canonical_levels", "random_proposals"]


def select_in_crop(
    boxes: np.ndarray,
    height: int,
    width: int,
    k: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    retries: int,
    min_overlap: float,
) -> Tuple[Tuple[int, int, int, int], np.ndarray]:
    """Draw a random resized crop and choose up to ``k`` boxes that overlap it.

    A box overlaps the crop when at least ``min_overlap`` of its area (and more than nothing)
    falls inside. While fewer than ``k`` boxes overlap, the crop is redrawn up to ``retries``
    more times and the crop with the most overlapping boxes is kept.

    Returns:
        ``(crop, chosen)``: the crop and the indices of at most ``k`` boxes, in random order.
        ``chosen`` is empty when no box overlaps any of the crops tried.
    """
    best_crop, best_idx = None, None
    for _ in range(retries + 1):
        crop = random_resized_crop(height, width, scale, ratio)
        frac = inside_fraction(boxes, crop)
        idx = np.flatnonzero((frac >= min_overlap) & (frac > 0))
        if best_idx is None or len(idx) > len(best_idx):
            best_crop, best_idx = crop, idx
        if len(best_idx) >= k:
            break
    chosen = best_idx[np.random.permutation(len(best_idx))[:k]]
    return best_crop, chosen


def assign_levels(boxes_xyxy, thresholds: Sequence[float]):
    """Scale-aware FPN level of each box (Sec. 3).

    With ``s = sqrt(w * h)`` in the pixels of the view the box lives in and thresholds
    ``(t0, t1, t2)``: ``s <= t0`` -> 0 (P2), ``t0 < s <= t1`` -> 1 (P3), ``t1 < s <= t2`` -> 2
    (P4), ``s > t2`` -> 3 (P5). More thresholds give more levels.

    Args:
        boxes_xyxy: (N, 4) numpy array or torch tensor.
        thresholds: increasing box sizes, e.g. ``(48, 96, 192)``.

    Returns:
        int64 level indices (N,), a torch tensor if the input is one, else a numpy array.
    """
    is_torch = isinstance(boxes_xyxy, torch.Tensor)
    b = boxes_xyxy.detach().cpu().numpy() if is_torch else np.asarray(boxes_xyxy)
    b = b.reshape(-1, 4).astype(np.float64)
    s = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
    levels = np.searchsorted(np.asarray(thresholds, dtype=np.float64), s, side="left")
    levels = levels.astype(np.int64)
    return torch.from_numpy(levels) if is_torch else levels


def canonical_levels(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Detectron2's FPN rule (224 px boxes on P4, clamped to P2..P5) as indices 0..3."""
    from detectron2.modeling.poolers import assign_boxes_to_levels
    from detectron2.structures import Boxes

    boxes = Boxes(torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)))
    # assign_boxes_to_levels already returns the level minus min_level (2), i.e. 0 = P2.
    return assign_boxes_to_levels([boxes], 2, 5, 224, 4).numpy()


def random_proposals(rng: np.random.Generator, width: float, height: float, n: int) -> np.ndarray:
    """``n`` random XYXY boxes that pass SoCo's proposal filter (sides >= 32 px,
    1/3 <= w/h <= 3, 0.3 <= sqrt(w*h / (W*H)) <= 0.8): the "random boxes" of the paper's
    ablation, and stand-in proposals for benchmarks and visualisation. Fewer than ``n`` (maybe
    none) when the image is too small for the filter."""
    f = BoxFilter()  # the filter's thresholds, as the proposal job applies them
    boxes = []
    for _ in range(100 * n):
        if len(boxes) == n:
            break
        side = rng.uniform(f.min_scale, f.max_scale) * math.sqrt(width * height)
        aspect = math.exp(rng.uniform(math.log(1 / f.max_aspect_ratio), math.log(f.max_aspect_ratio)))
        w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
        if f.min_size <= w <= width and f.min_size <= h <= height:
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            boxes.append([x, y, x + w, y + h])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
