"""The boxes of a labelled COCO json written as a Detectron2 proposal file: an oracle for
ablations ("SoCo told where every object is, never what it is"), the upper bound of what
better proposals can give. Categories are dropped; crowd boxes are left out.

CLI: ``tools/generate_proposals.py --ground-truth --coco-json J --image-root R --output O``.
"""
import pickle
from collections import defaultdict
from typing import Dict

import numpy as np

from ...utils.atomic_io import atomic_write_bytes
from ..image_list import read_coco_json
from .job import PICKLE_PROTOCOL

__all__ = ["ground_truth_proposals", "write_ground_truth_proposals"]


def ground_truth_proposals(coco_json: str) -> Dict[str, list]:
    """
    Args:
        coco_json: a COCO instances json with ``images`` and ``annotations`` (``bbox`` XYWH).

    Returns:
        A proposal dict as ``detectron2.data.load_proposals_into_dataset`` reads it: ``ids``
        (COCO image ids, in the json's image order, every image, also those without boxes),
        ``boxes`` ((B, 4) float32 XYXY_ABS per image, in annotation order), ``objectness_logits``
        ((B,) 0, -1, -2, ...: Detectron2 sorts proposals by them, so the order is kept) and
        ``bbox_mode``.

    Raises:
        FileNotFoundError: the json does not exist.
        ValueError: it has no or an empty ``images`` list, or an annotation's bbox is not 4 finite numbers
            (the message names the annotation id and the file).
    """
    from detectron2.structures import BoxMode

    data = read_coco_json(coco_json)
    if not data["images"]:
        raise ValueError(f"{coco_json}: the 'images' list is empty")
    boxes_of = defaultdict(list)
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        bbox = np.asarray(ann.get("bbox", ()), dtype=np.float64)
        if bbox.shape != (4,) or not np.isfinite(bbox).all():
            raise ValueError(f"{coco_json}: annotation {ann.get('id')} has bbox {ann.get('bbox')!r}, "
                             "not 4 finite numbers (x, y, w, h)")
        x, y, w, h = bbox
        boxes_of[ann["image_id"]].append((x, y, x + w, y + h))
    ids = [im["id"] for im in data["images"]]
    boxes = [np.asarray(boxes_of[i], dtype=np.float32).reshape(-1, 4) for i in ids]
    return {"ids": ids, "boxes": boxes,
            "objectness_logits": [-np.arange(len(b), dtype=np.float32) for b in boxes],
            "bbox_mode": BoxMode.XYXY_ABS}


def write_ground_truth_proposals(coco_json: str, output: str) -> Dict[str, list]:
    """``ground_truth_proposals(coco_json)`` written to ``output`` atomically; returns it."""
    proposals = ground_truth_proposals(coco_json)
    atomic_write_bytes(output, pickle.dumps(proposals, protocol=PICKLE_PROTOCOL))
    return proposals
