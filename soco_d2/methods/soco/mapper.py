"""SoCo's dataset mapper: one pretraining record -> the views, their boxes and the view pairs.

Output of ``SoCoDatasetMapper(cfg)(record)`` (what the SoCo model's forward takes)::

    {
      "file_name": str, "image_id": int | str,
      "views": [                       # V1, V2 (, V3 unless INPUT.SOCO.VIEW3_SIZE is 0)
                                       # (, V4 when INPUT.SOCO.VIEW4_SIZE > 0)
        {
          "image": torch.uint8 tensor (3, S_v, S_v), channel order cfg.INPUT.FORMAT ("RGB"
                   in SoCo configs), NOT normalised (the model subtracts PIXEL_MEAN / PIXEL_STD),
          "boxes": detectron2.structures.Boxes (B_v, 4), XYXY in this view's pixels, inside it,
          "ids":   torch.int64 (B_v,), unique within the view: the index of the proposal in the
                   record's proposal_boxes; padded copies get ids >= P (P = number of proposals),
          "levels": torch.int64 (B_v,), FPN level index 0..3 meaning P2..P5, computed in the
                   mapper from the box size in THIS view (rule: MODEL.SOCO.LEVEL_ASSIGNMENT),
        }, ...
      ],
      "pairs": [                       # the view pairs of the loss, each with exactly K matches
        (a: int, b: int, idx_a: torch.int64 (K,), idx_b: torch.int64 (K,)),
        # views[a].ids[idx_a] == views[b].ids[idx_b]; (0,1), (0,2) (, (0,3))
      ],
    }

The loss for a pair is symmetrised inside the model (a->b and b->a). SoCo's own geometry
(proposals in a crop, levels) lives in :mod:`.views`; the shared pieces in ``soco_d2/data/``:
crops, resizing and box maths in ``box_ops.py``, colour in ``color_augment.py``, decoding in
``decode.py``. This file puts the pieces together.

Randomness: numpy's global RNG, or, when a ``seed`` is passed (the training loader does, see
``soco_d2/data/sample_stream.py``), an RNG seeded by it for this one call, so a sample is a pure function of
(record, seed). Unreadable images (0 bytes, truncated, corrupt, missing) are skipped: the
mapper logs the file and the running count and returns None, and the loader uses another image.
"""
import logging
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import Boxes, BoxMode
from detectron2.utils.file_io import PathManager

from ...data.box_ops import (
    clip_boxes,
    crop_resize_boxes,
    cut_view,
    hflip_boxes,
    jitter_boxes,
    resize_antialiased,
)
from ...data.color_augment import ColorRecipe, apply_color_recipe, cutout_in_boxes
from ...data.decode import ImageReadError, decode_image, image_header
from .config import LEVEL_ASSIGNMENTS, VIEW3_MODES
from .views import assign_levels, canonical_levels, select_in_crop

__all__ = ["SoCoDatasetMapper"]

logger = logging.getLogger(__name__)


class SoCoDatasetMapper:
    """Turns a pretraining record into SoCo's views (Sec. 2) and matched proposals.

    V1 is the whole image, V2 a random resized crop, V3 either its own crop ("crop") or V2
    downsampled ("downsample"), and V4 (when ``view4_size`` > 0, SoCo*) V2 resized. Each pair
    (V1, Vb) has exactly ``num_proposals`` proposals visible in both views. Output format:
    the module docstring. Randomness: numpy's global RNG (seeded per worker by Detectron2), or
    the RNG of the ``seed`` given to :meth:`__call__`. An unreadable image maps to None (logged
    and counted in :attr:`num_skipped`).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str = "RGB",
        view1_size: int = 224,
        view2_size: int = 224,
        view3_size: int = 112,
        view3_mode: str = "crop",
        view4_size: int = 0,
        crop_scale: Tuple[float, float] = (0.5, 1.0),
        crop_ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        crop_retries: int = 5,
        num_proposals: int = 4,
        min_overlap: float = 0.0,
        box_jitter_prob: float = 0.5,
        box_jitter_ratio: float = 0.1,
        flip_prob: float = 0.5,
        color_jitter_prob: float = 0.8,
        color_jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        grayscale_prob: float = 0.2,
        blur_prob: Tuple[float, float] = (1.0, 0.1),
        blur_sigma: Tuple[float, float] = (0.1, 2.0),
        solarize_prob: Tuple[float, float] = (0.0, 0.2),
        cutout_in_box: bool = True,
        cutout_prob: float = 0.5,
        cutout_area: Tuple[float, float] = (0.1, 0.3),
        cutout_fill: Sequence[float] = (0.0, 0.0, 0.0),
        level_assignment: str = "scale_aware",
        level_thresholds: Sequence[float] = (48, 96, 192),
        reduced_decode: bool = True,
    ):
        """
        Args:
            is_train: kept for Detectron2's mapper signature; SoCo maps training data only.
            image_format: channel order of the output images, "RGB" or "BGR".
            view1_size .. view4_size: output sides of the views (view4_size 0: no V4).
            view3_mode: "crop" (own random resized crop) or "downsample" (V2 resized).
                ``view3_size`` 0: no V3 (the published C4 run's two views).
            crop_scale, crop_ratio: area and aspect ranges of the random resized crops.
            crop_retries: extra crops tried while fewer than K proposals overlap.
            num_proposals: K, proposals per view pair.
            min_overlap: fraction of a proposal's area that must lie inside a crop; 0: any
                overlap counts (the authors' run), the box is then clipped to the crop.
            box_jitter_prob, box_jitter_ratio: per-box jitter of V1's boxes (and the ratio of
                the jittered copies that pad a pair).
            flip_prob: horizontal flip probability of every view.
            color_jitter_prob, color_jitter, grayscale_prob, blur_sigma: colour recipe.
            blur_prob, solarize_prob: (V1, other views).
            cutout_in_box, cutout_prob, cutout_area: cutout at the boxes of V2/V3/V4.
            cutout_fill: the cutout's colour in ``image_format`` order (the model's
                PIXEL_MEAN, which normalises to 0).
            level_assignment: "scale_aware", "canonical" or "all" (stores scale_aware).
            level_thresholds: box sizes separating P2/P3/P4/P5.
            reduced_decode: allow JPEG decoding at a reduced DCT scale (see ``_reduce_factor``).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR' for SoCo, got {image_format!r}")
        if view3_mode not in VIEW3_MODES:
            raise ValueError(f"VIEW3_MODE must be 'crop' or 'downsample', got {view3_mode!r}")
        if level_assignment not in LEVEL_ASSIGNMENTS:
            raise ValueError(f"Unknown LEVEL_ASSIGNMENT {level_assignment!r}")
        if num_proposals < 1:
            raise ValueError(f"NUM_PROPOSALS must be >= 1, got {num_proposals}")
        self.is_train = is_train
        self.image_format = image_format
        self.sizes = [int(view1_size), int(view2_size), int(view3_size)]
        self.view3_mode = view3_mode
        self.view4_size = int(view4_size)
        self.crop_args = (tuple(crop_scale), tuple(crop_ratio), int(crop_retries))
        self.k = int(num_proposals)
        self.min_overlap = float(min_overlap)
        self.box_jitter_prob = float(box_jitter_prob)
        self.box_jitter_ratio = float(box_jitter_ratio)
        self.flip_prob = float(flip_prob)
        common = dict(
            jitter_prob=color_jitter_prob,
            jitter=tuple(color_jitter),
            grayscale_prob=grayscale_prob,
            blur_sigma=tuple(blur_sigma),
        )
        self.recipes = (
            ColorRecipe(blur_prob=blur_prob[0], solarize_prob=solarize_prob[0], **common),
            ColorRecipe(blur_prob=blur_prob[1], solarize_prob=solarize_prob[1], **common),
        )
        # The mapper works in BGR (OpenCV) until _finish: the fill colour too.
        fill = tuple(float(c) for c in cutout_fill)
        if image_format == "RGB":
            fill = fill[::-1]
        self.cutout = (float(cutout_prob) if cutout_in_box else 0.0, tuple(cutout_area), fill)
        self.level_assignment = level_assignment
        self.level_thresholds = tuple(level_thresholds)
        self.reduced_decode = reduced_decode
        # Images skipped as unreadable by this mapper (per process: each loader worker
        # holds its own copy).
        self.num_skipped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        s = cfg.INPUT.SOCO
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "view1_size": s.VIEW1_SIZE,
            "view2_size": s.VIEW2_SIZE,
            "view3_size": s.VIEW3_SIZE,
            "view3_mode": s.VIEW3_MODE,
            "view4_size": s.VIEW4_SIZE,
            "crop_scale": s.CROP_SCALE,
            "crop_ratio": s.CROP_RATIO,
            "crop_retries": s.CROP_RETRIES,
            "num_proposals": s.NUM_PROPOSALS,
            "min_overlap": s.MIN_OVERLAP,
            "box_jitter_prob": s.BOX_JITTER_PROB,
            "box_jitter_ratio": s.BOX_JITTER_RATIO,
            "flip_prob": s.FLIP_PROB,
            "color_jitter_prob": s.COLOR_JITTER_PROB,
            "color_jitter": s.COLOR_JITTER,
            "grayscale_prob": s.GRAYSCALE_PROB,
            "blur_prob": s.BLUR_PROB,
            "blur_sigma": s.BLUR_SIGMA,
            "solarize_prob": s.SOLARIZE_PROB,
            "cutout_in_box": s.CUTOUT_IN_BOX,
            "cutout_prob": s.CUTOUT_PROB,
            "cutout_area": s.CUTOUT_AREA,
            "cutout_fill": cfg.MODEL.PIXEL_MEAN,
            "level_assignment": cfg.MODEL.SOCO.LEVEL_ASSIGNMENT,
            "level_thresholds": cfg.MODEL.SOCO.LEVEL_THRESHOLDS,
        }

    # ------------------------------------------------------------------ proposals
    def _select(self, pool: dict, crop_view: int, width: int, height: int):
        """Crop for view ``crop_view`` and exactly K pool indices visible in it and in V1.

        Fewer than K overlapping proposals -> padded with jittered copies (fresh ids); none at
        all -> the crop itself becomes a proposal first.
        """
        scale, ratio, retries = self.crop_args
        # Only the record's own proposals compete; copies added for other views do not.
        crop, chosen = select_in_crop(
            pool["boxes"][: pool["n_base"]], height, width, self.k, scale, ratio, retries,
            self.min_overlap,
        )
        if len(chosen) == 0:
            x0, y0, w, h = crop
            chosen = self._add(pool, np.array([[x0, y0, x0 + w, y0 + h]], np.float32))
        if len(chosen) < self.k:
            src = chosen[np.arange(self.k - len(chosen)) % len(chosen)]
            copies = jitter_boxes(pool["boxes"][src], self.box_jitter_ratio)
            chosen = np.concatenate([chosen, self._add(pool, clip_boxes(copies, width, height))])
        return crop, chosen

    @staticmethod
    def _add(pool: dict, boxes: np.ndarray) -> np.ndarray:
        """Append boxes with fresh ids to the pool; return their pool indices."""
        start, n = len(pool["boxes"]), len(boxes)
        pool["boxes"] = np.concatenate([pool["boxes"], boxes])
        pool["ids"] = np.concatenate([pool["ids"], pool["next_id"] + np.arange(n)])
        pool["next_id"] += n
        return np.arange(start, start + n)

    def _reduce_factor(self, width: int, height: int, crops: List[Tuple]) -> int:
        # Rule: decode a JPEG at 1/f (f = 8, 4, 2) only if every view cut from the decoded
        # image still has at least its output resolution there, i.e. for V1 (whole image) and
        # each crop (V2, and V3 in "crop" mode): crop_w / f >= S and crop_h / f >= S. Views made
        # from V2 (V3 "downsample", V4) then follow. Nothing is ever upsampled because of it.
        sources = [(width, height, self.sizes[0])] + [(c[2], c[3], s) for c, s in crops]
        for f in (8, 4, 2):
            if all(w >= f * s and h >= f * s for w, h, s in sources):
                return f
        return 1

    def _levels(self, boxes: np.ndarray) -> np.ndarray:
        if self.level_assignment == "canonical":
            return canonical_levels(boxes)
        return assign_levels(boxes, self.level_thresholds)

    # ------------------------------------------------------------------ views
    def _flip(self, view: np.ndarray, boxes: np.ndarray):
        if np.random.random_sample() < self.flip_prob:
            return cv2.flip(view, 1), hflip_boxes(boxes, view.shape[1])
        return view, boxes

    def __call__(self, dataset_dict: dict, seed=None) -> Optional[dict]:
        """Map one record (``file_name``, ``image_id``, ``proposal_boxes`` XYXY_ABS, maybe
        empty) to ``{"file_name", "image_id", "views", "pairs"}`` (module docstring).

        Args:
            dataset_dict: the record.
            seed: None (numpy's global RNG) or an int / sequence of uint32 words: all random
                draws of this call then come from ``np.random.seed(seed)``, and the global
                RNG state is restored afterwards.

        Returns:
            the views, or None when the image cannot be read (logged and counted).
        """
        if seed is None:
            return self._map_or_skip(dataset_dict)
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            return self._map_or_skip(dataset_dict)
        finally:
            np.random.set_state(state)

    def _map_or_skip(self, dataset_dict: dict) -> Optional[dict]:
        try:
            return self._map(dataset_dict)
        except ImageReadError as e:
            self.num_skipped += 1
            logger.warning(
                f"Skipping unreadable image {dataset_dict['file_name']} "
                f"(id {dataset_dict.get('image_id')}): {e}. "
                f"{self.num_skipped} image(s) skipped so far in this process."
            )
            return None

    def _map(self, dataset_dict: dict) -> dict:
        try:
            with PathManager.open(dataset_dict["file_name"], "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageReadError("unreadable", f"cannot read the file ({e})") from e
        header = image_header(data)
        img = None
        if header is None or not header[2]:
            img = decode_image(data)
            width, height = img.shape[1], img.shape[0]
        else:
            width, height = header[:2]

        # Candidate proposals: the record's boxes clipped to the image (ids = their index);
        # none usable -> the whole image, with the fresh id P.
        props = np.asarray(dataset_dict.get("proposal_boxes", np.zeros((0, 4))), np.float32)
        props = props.reshape(-1, 4)
        # Non-finite boxes can only come from proposal files loaded elsewhere (SoCo's loader
        # drops and counts them, soco_d2.data.pretrain_datasets.attach_proposals); their ids are kept unused.
        finite = np.isfinite(props).all(axis=1)
        if not finite.all():
            props = np.where(finite[:, None], props, 0.0).astype(np.float32)
        mode = dataset_dict.get("proposal_bbox_mode", BoxMode.XYXY_ABS)
        if mode != BoxMode.XYXY_ABS:
            props = BoxMode.convert(props, mode, BoxMode.XYXY_ABS)
        clipped = clip_boxes(props, width, height, min_size=0.0)
        ok = np.flatnonzero(
            finite
            & ((clipped[:, 2] - clipped[:, 0]) >= 1)
            & ((clipped[:, 3] - clipped[:, 1]) >= 1)
        )
        pool = {"boxes": clipped[ok], "ids": ok.astype(np.int64), "next_id": len(props)}
        if len(ok) == 0:
            self._add(pool, np.array([[0, 0, width, height]], np.float32))
        pool["n_base"] = len(pool["boxes"])

        crop_views = [1, 2] if self.view3_mode == "crop" and self.sizes[2] > 0 else [1]
        selections = {v: self._select(pool, v, width, height) for v in crop_views}

        if img is None:
            crops = [(selections[v][0], self.sizes[v]) for v in crop_views]
            f = self._reduce_factor(width, height, crops) if self.reduced_decode else 1
            img = decode_image(data, f)
        sx, sy = img.shape[1] / width, img.shape[0] / height

        # V1 holds every selected proposal once, in order of first use.
        used_pos = np.concatenate([chosen for _, chosen in selections.values()]).tolist()
        v1_pos = np.array(list(dict.fromkeys(used_pos)))
        where_v1 = {p: i for i, p in enumerate(v1_pos.tolist())}

        s1 = self.sizes[0]
        view, used = cut_view(img, (0, 0, width, height), sx, sy, s1)
        boxes = crop_resize_boxes(pool["boxes"][v1_pos], used, s1, s1)
        jitter = np.random.random_sample(len(boxes)) < self.box_jitter_prob
        if jitter.any():
            boxes[jitter] = jitter_boxes(boxes[jitter], self.box_jitter_ratio)
        view, boxes = self._flip(view, clip_boxes(boxes, s1, s1))
        views = [(view, boxes, pool["ids"][v1_pos])]
        pairs = []

        for v in crop_views:
            crop, chosen = selections[v]
            size = self.sizes[v]
            view, used = cut_view(img, crop, sx, sy, size)
            boxes = crop_resize_boxes(pool["boxes"][chosen], used, size, size)
            boxes = clip_boxes(boxes, size, size)
            view, boxes = self._flip(view, boxes)
            views.append((view, boxes, pool["ids"][chosen]))
            pairs.append((0, len(views) - 1, [where_v1[p] for p in chosen.tolist()]))

        # Views made by resizing V2 (same proposals and flip as V2).
        downsampled_v3 = self.view3_mode == "downsample" and self.sizes[2] > 0
        derived = ([self.sizes[2]] if downsampled_v3 else []) + (
            [self.view4_size] if self.view4_size > 0 else []
        )
        v2_view, v2_boxes, v2_ids = views[1]
        for size in derived:
            view = resize_antialiased(v2_view, size, size)
            s = size / v2_view.shape[1]
            views.append((view, clip_boxes(v2_boxes * s, size, size), v2_ids))
            pairs.append((0, len(views) - 1, pairs[0][2]))

        return {
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict["image_id"],
            "views": [self._finish(i, *v) for i, v in enumerate(views)],
            "pairs": [
                (a, b, torch.as_tensor(idx_a, dtype=torch.int64), torch.arange(self.k))
                for a, b, idx_a in pairs
            ],
        }

    def _finish(self, index: int, view: np.ndarray, boxes: np.ndarray, ids: np.ndarray) -> dict:
        """Colour-augment a geometric view and package it as the model expects."""
        view = apply_color_recipe(view, self.recipes[min(index, 1)], bgr=True)
        if index > 0 and self.cutout[0] > 0:
            view = cutout_in_boxes(np.ascontiguousarray(view), boxes, *self.cutout)
        if self.image_format == "RGB":
            view = view[:, :, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))),
            "boxes": Boxes(torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))),
            "ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)),
            "levels": torch.from_numpy(self._levels(boxes)),
        }
