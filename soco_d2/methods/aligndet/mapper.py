"""AlignDet's dataset mapper: one pretraining record -> two views of the whole image and the
pseudo-boxes in each (ALIGNDET_SPEC.md, Pseudo-boxes and Views).

Output of ``AlignDetDatasetMapper(cfg)(record)`` (what the AlignDet models' forward takes)::

    {
      "file_name": str, "image_id": int | str,
      "views": [                  # two, each made independently from the whole image
        {
          "image": torch.uint8 (3, H_v, W_v), channel order cfg.INPUT.FORMAT, NOT normalised,
          "boxes": detectron2.structures.Boxes (B, 4), XYXY in this view's pixels, inside it,
          "ids":   torch.int64 (B,), the instance id of each box: its index in the record's
                   proposal_boxes (the whole-image box, when none passes: P = their number),
        }, ...
      ],
    }

Both views hold the same B pseudo-boxes in the same order (no crop: every box is in both views);
the model makes the ids unique within the batch. Each view: short side drawn from
``min_sizes``, long side capped at ``max_size``; horizontal flip with ``flip_prob``; one
photometric op from ``photometric_ops`` (``soco_d2.data.color_augment.random_photometric``).

Pseudo-boxes: the record's proposal boxes with non-finite coordinates dropped (counted in
:attr:`num_nonfinite` and logged), clipped to the image, then AlignDet's filter in original
pixels (w, h >= ``min_box_size``, aspect within ``max_aspect_ratio``, sqrt(area ratio) <=
``max_box_scale``) and the top-K (``max_boxes``) in proposal-file order; none left -> the whole
image. Randomness and unreadable images: :class:`soco_d2.data.mapper_base.PretrainMapper`.
"""
import logging
import sys
from typing import Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import Boxes

from ...data.box_ops import clip_boxes, crop_resize_boxes, hflip_boxes, resize_antialiased, trimmed_extent
from ...data.color_augment import PHOTOMETRIC_OPS, random_photometric
from ...data.decode import decode_image
from ...data.mapper_base import PretrainMapper, read_file_bytes, record_proposals
from ...data.proposals.selective_search import FULL, BoxFilter, filter_boxes

__all__ = ["AlignDetDatasetMapper"]

logger = logging.getLogger(__name__)


class AlignDetDatasetMapper(PretrainMapper):
    """Turns a pretraining record into AlignDet's two views and their pseudo-boxes (format in
    the module docstring)."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str = "RGB",
        min_sizes: Sequence[int] = (640, 672, 704, 736, 768, 800),
        max_size: int = 1333,
        flip_prob: float = 0.5,
        photometric_ops: Sequence[str] = PHOTOMETRIC_OPS,
        enhance_range: Tuple[float, float] = (0.1, 1.9),
        posterize_bits: Tuple[int, int] = (4, 8),
        solarize_range: Tuple[float, float] = (0.0, 256.0),
        min_box_size: float = 32.0,
        max_aspect_ratio: float = 3.0,
        max_box_scale: float = 0.8,
        max_boxes: int = 0,
    ):
        """
        Args:
            is_train: kept for Detectron2's mapper signature; AlignDet maps training data only.
            image_format: channel order of the output images, "RGB" or "BGR".
            min_sizes, max_size: short side choices and long side cap of each view.
            flip_prob: horizontal flip probability of each view.
            photometric_ops, enhance_range, posterize_bits, solarize_range: the photometric op
                of each view and its magnitudes.
            min_box_size, max_aspect_ratio, max_box_scale: the pseudo-box filter.
            max_boxes: keep the first K boxes that pass (0: all).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR' for AlignDet, got {image_format!r}")
        self.is_train = is_train
        self.image_format = image_format
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.photometric = dict(
            ops=tuple(photometric_ops), enhance_range=tuple(enhance_range),
            posterize_bits=tuple(int(b) for b in posterize_bits), solarize_range=tuple(solarize_range),
        )
        # AlignDet's filter is SoCo's without the lower scale bound.
        self.box_filter = BoxFilter(min_size=float(min_box_size), max_aspect_ratio=float(max_aspect_ratio),
                                    min_scale=0.0, max_scale=float(max_box_scale))
        self.max_boxes = int(max_boxes)
        # Proposal boxes with NaN / inf coordinates dropped by this mapper (per process).
        self.num_nonfinite = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        a = cfg.INPUT.ALIGNDET
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "min_sizes": a.MIN_SIZES,
            "max_size": a.MAX_SIZE,
            "flip_prob": a.FLIP_PROB,
            "photometric_ops": a.PHOTOMETRIC_OPS,
            "enhance_range": a.ENHANCE_RANGE,
            "posterize_bits": a.POSTERIZE_BITS,
            "solarize_range": a.SOLARIZE_RANGE,
            "min_box_size": a.MIN_BOX_SIZE,
            "max_aspect_ratio": a.MAX_ASPECT_RATIO,
            "max_box_scale": a.MAX_BOX_SCALE,
            "max_boxes": a.MAX_BOXES,
        }

    # ------------------------------------------------------------------ pseudo-boxes
    def pseudo_boxes(self, record: dict, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(boxes (B, 4) float32 XYXY in image pixels, ids (B,) int64)``, B >= 1 (module
        docstring)."""
        boxes, index = record_proposals(record, width, height)
        num_records = len(record.get("proposal_boxes", ()))
        if len(index) < num_records:
            self.num_nonfinite += num_records - len(index)
            logger.warning(
                f"{record['file_name']}: dropped {num_records - len(index)} proposal boxes with "
                f"NaN/inf coordinates; {self.num_nonfinite} dropped so far in this process."
            )
        kept = filter_boxes(boxes, width, height, self.box_filter)
        if kept.stage != FULL:  # no box passes every rule: the whole image (SoCo's fallbacks unused)
            return np.array([[0, 0, width, height]], np.float32), np.array([num_records], np.int64)
        keep = kept.keep[: self.max_boxes] if self.max_boxes > 0 else kept.keep
        return boxes[keep], index[keep]

    # ------------------------------------------------------------------ views
    def _view(self, img: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One view: resize (short side from ``min_sizes``, long side capped), flip, one
        photometric op. Returns the BGR view and the boxes in its pixels."""
        h, w = img.shape[:2]
        short = self.min_sizes[int(np.random.randint(len(self.min_sizes)))]
        cap = self.max_size if self.max_size > 0 else sys.maxsize
        out_h, out_w = ResizeShortestEdge.get_output_shape(h, w, short, cap)
        # Shrinking by 2x or more trims a few pixels (resize_antialiased): map boxes with the
        # region actually used so they stay on the content.
        used_w, used_h = trimmed_extent(w, h, out_w, out_h)
        view = resize_antialiased(img, out_w, out_h)
        boxes = clip_boxes(crop_resize_boxes(boxes, (0, 0, used_w, used_h), out_w, out_h), out_w, out_h)
        if np.random.random_sample() < self.flip_prob:
            view, boxes = cv2.flip(view, 1), hflip_boxes(boxes, out_w)
        view = random_photometric(view, bgr=True, **self.photometric)
        return view, boxes

    def _map(self, record: dict) -> dict:
        img = decode_image(read_file_bytes(record["file_name"]))
        height, width = img.shape[:2]
        boxes, ids = self.pseudo_boxes(record, width, height)
        views = []
        for _ in range(2):
            view, view_boxes = self._view(img, boxes)
            if self.image_format == "RGB":
                view = view[:, :, ::-1]
            views.append({
                "image": torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))),
                "boxes": Boxes(torch.from_numpy(np.ascontiguousarray(view_boxes, dtype=np.float32))),
                "ids": torch.from_numpy(ids.copy()),
            })
        return {"file_name": record["file_name"], "image_id": record["image_id"], "views": views}
