"""Montage samples: the boxes a record offers, and drawing one sample (a "piece") from a record.

A *sample record* is the compact form of a Detectron2 dataset dict that the Montage loader
works on (:func:`sample_records`)::

    {"file_name": str, "image_id": int | str, "index": int (position in the list),
     "boxes": float32 (B, 4) XYXY_ABS, "classes": int64 (B,), "usable": bool (B,)}

- SAMPLES "gt" (the paper): ``boxes`` are all annotated boxes; ``classes`` their contiguous
  category ids; crowd boxes are not usable as positives but background crops still avoid them.
- SAMPLES "proposals" (label-free, ours): ``boxes`` are the record's first P selective-search
  proposals (highest objectness, INPUT.MONTAGE.PROPOSALS_PER_IMAGE); ``classes`` are -1, the
  model reads their pseudo-class from the table of ``pseudo_labels.py`` by ``(index, box)``. A
  record without proposals gets the whole image as its one box (as in SoCo).

A piece (:func:`draw_piece`) is either a positive (spec: a box, randomly enlarged for context,
with its class) or a background crop (spec: IoU 0 with every box, class "background"):

- positive: a usable box (clipped width and height >= MIN_BOX_SIZE) drawn uniformly; each side
  moves out by ``U(CONTEXT)`` times the box's width (left, right) or height (top, bottom),
  clipped to the image, rounded outwards to whole pixels;
- background, with probability BACKGROUND_PROB: its aspect group is drawn uniformly among S, T,
  W and its aspect log-uniformly inside the group (within [1/3, 3]), its area uniformly in
  BACKGROUND_SCALE of the image's; up to BACKGROUND_TRIES random integer placements are tried
  and the first that overlaps no box at all (intersection area 0, hence IoU 0) is taken. If none
  is found the piece becomes a positive; a record with neither gives no piece (None).
"""
import logging
import math
from typing import List, Optional, Sequence

import numpy as np
from detectron2.structures import BoxMode

from ...data.box_ops import clip_boxes

__all__ = ["sample_records", "draw_piece", "piece_boxes", "overlap_area"]

logger = logging.getLogger(__name__)

# Whole-image box of a record without proposals; clipped to the image when it is decoded.
_WHOLE_IMAGE = np.array([[0.0, 0.0, 1e9, 1e9]], np.float32)
# Aspect range of background crops (that of SoCo's proposal filter).
_BACKGROUND_ASPECTS = (1.0 / 3.0, 3.0)


def _gt_boxes(record: dict):
    anns = record.get("annotations", [])
    boxes = np.array(
        [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
        np.float32,
    ).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in anns], np.int64)
    usable = np.array([not a.get("iscrowd", 0) for a in anns], bool)
    return boxes, classes, usable


def _proposal_boxes(record: dict, per_image: int):
    boxes = np.asarray(record["proposal_boxes"], np.float32).reshape(-1, 4)
    mode = record.get("proposal_bbox_mode", BoxMode.XYXY_ABS)
    if mode != BoxMode.XYXY_ABS:
        boxes = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
    boxes = boxes[:per_image]  # proposals are stored highest objectness first
    if len(boxes) == 0:
        boxes = _WHOLE_IMAGE
    return boxes, np.full(len(boxes), -1, np.int64), np.ones(len(boxes), bool)


def sample_records(records: Sequence[dict], source: str, proposals_per_image: int = 8) -> List[dict]:
    """The sample records (module docstring) of Detectron2 dataset dicts, in the same order.

    Boxes with a non-finite coordinate are dropped (their count is logged).

    Raises:
        ValueError: ``source`` is "proposals" and a record has no ``proposal_boxes`` (the
            dataset is not a pretraining set with a proposal file).
    """
    out, dropped = [], 0
    for index, record in enumerate(records):
        if source == "gt":
            boxes, classes, usable = _gt_boxes(record)
        else:
            if "proposal_boxes" not in record:
                raise ValueError(
                    f"{record['file_name']} has no proposals: INPUT.MONTAGE.SAMPLES 'proposals' "
                    "needs pretraining datasets with a proposal file (e.g. soco_synthetic_train)"
                )
            boxes, classes, usable = _proposal_boxes(record, proposals_per_image)
        finite = np.isfinite(boxes).all(axis=1)
        if source == "gt" and not finite.all():  # proposal ids must stay stable: keep, unusable
            dropped += int((~finite).sum())
            boxes, classes, usable = boxes[finite], classes[finite], usable[finite]
        usable = usable & finite
        boxes = np.where(finite[:, None], boxes, 0.0).astype(np.float32)
        out.append({"file_name": record["file_name"], "image_id": record["image_id"],
                    "index": index, "boxes": boxes, "classes": classes, "usable": usable})
    if dropped:
        logger.warning(f"Dropped {dropped} annotated boxes with NaN/inf coordinates")
    return out


def piece_boxes(record: dict, width: int, height: int):
    """The record's boxes clipped to a ``width`` x ``height`` image and which are positives
    (usable and both clipped sides >= 1 px; the caller applies MIN_BOX_SIZE)."""
    boxes = clip_boxes(record["boxes"], width, height, min_size=0.0)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return boxes, record["usable"] & (sides >= 1)


def overlap_area(crop: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """Intersection area of ``crop = (x0, y0, x1, y1)`` with each box (N,)."""
    iw = np.minimum(boxes[:, 2], crop[2]) - np.maximum(boxes[:, 0], crop[0])
    ih = np.minimum(boxes[:, 3], crop[3]) - np.maximum(boxes[:, 1], crop[1])
    return np.maximum(iw, 0) * np.maximum(ih, 0)


def _enlarged(box: np.ndarray, context, width: int, height: int, rng) -> tuple:
    w, h = box[2] - box[0], box[3] - box[1]
    lo, hi = context
    left, top, right, bottom = rng.uniform(lo, hi, size=4)
    x0 = max(0, math.floor(box[0] - left * w))
    y0 = max(0, math.floor(box[1] - top * h))
    x1 = min(width, math.ceil(box[2] + right * w))
    y1 = min(height, math.ceil(box[3] + bottom * h))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _background(boxes: np.ndarray, width: int, height: int, scale, bounds, tries: int,
                min_side: int, rng) -> Optional[tuple]:
    lo_a, hi_a = _BACKGROUND_ASPECTS
    group_ranges = ((bounds[0], bounds[1]), (lo_a, bounds[0]), (bounds[1], hi_a))  # S, T, W
    for _ in range(tries):
        lo, hi = group_ranges[rng.randint(3)]
        aspect = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        area = rng.uniform(*scale) * width * height
        w = int(round(math.sqrt(area * aspect)))
        h = int(round(math.sqrt(area / aspect)))
        if not (min_side <= w <= width and min_side <= h <= height):
            continue
        x0 = int(rng.randint(0, width - w + 1))
        y0 = int(rng.randint(0, height - h + 1))
        crop = (x0, y0, x0 + w, y0 + h)
        if len(boxes) == 0 or not (overlap_area(crop, boxes) > 0).any():
            return crop
    return None


def draw_piece(record: dict, width: int, height: int, rng, *, background_prob: float,
               context, background_scale, group_bounds, background_tries: int,
               min_box_size: int) -> Optional[dict]:
    """One piece of ``record`` whose image is ``width`` x ``height`` (module docstring); ``rng``
    is ``numpy.random`` or a ``numpy.random.RandomState``.

    Returns:
        None when the record offers neither a positive nor a background crop, else
        ``{"crop": (x0, y0, x1, y1) ints, "box": int (index into record["boxes"], -1 for a
        background crop), "label": the box's class (-1: a pseudo-class to look up), None for
        a background crop}``.
    """
    boxes, ok = piece_boxes(record, width, height)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    positives = np.flatnonzero(ok & (sides >= min_box_size))
    want_background = rng.random_sample() < background_prob
    if want_background or len(positives) == 0:
        crop = _background(boxes, width, height, background_scale, group_bounds,
                           background_tries, min_box_size, rng)
        if crop is not None:
            return {"crop": crop, "box": -1, "label": None}
        if len(positives) == 0:
            return None
    b = int(positives[rng.randint(len(positives))])
    crop = _enlarged(boxes[b], context, width, height, rng)
    return {"crop": crop, "box": b, "label": int(record["classes"][b])}
