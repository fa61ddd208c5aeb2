"""Montage's dataset mapper: one sample number -> one montage of four pieces and its region map.

Output of ``MontageDatasetMapper(cfg, records)(record, seed)`` (what the Montage model takes)::

    {
      "image":   torch.uint8 (3, S, S), S = INPUT.MONTAGE.CANVAS_SIZE, channel order
                 cfg.INPUT.FORMAT, NOT normalised (the model does it),
      "regions": torch.int64 (S, S), the region (0..3) that covers each pixel,
      "labels":  torch.int64 (4,), class of each region: 0..NUM_CLASSES-1 an object class,
                 NUM_CLASSES background, -1 a pseudo-class the model looks up (label-free),
      "refs":    torch.int64 (4, 2), (record index, box index) each piece was cut from;
                 box index -1 for a background crop,
      "groups":  torch.int64 (4,), aspect group of each piece: 0 S, 1 T, 2 W,
      "crops":   torch.float32 (4, 4), each piece's crop (XYXY) in its source image's pixels,
      "file_name", "image_id": those of ``record``, the montage's first piece,
    }

How a montage is made (spec: Samples, Montage assembly; details in ``samples.py`` and
``layout.py``): the first piece comes from ``record`` (the sample stream's image, so every image
leads one montage per epoch), the other three from records drawn uniformly from the whole
training set; each piece is a positive or a background crop, flipped horizontally with
FLIP_PROB; the four are shuffled, the canvas is split by the layout rule for their aspect
ratios, and each piece is resized into its region (no padding, no overlap: the region map covers
every pixel exactly once).

Randomness and unreadable images: :class:`soco_d2.data.mapper_base.PretrainMapper` (numpy's
RNG seeded by the ``seed`` of the call, which the training loader derives from ``(SEED, sample
number)``, so a montage is a pure function of (records, record, seed); an unreadable image,
the record's or a partner's, makes the call return None, logged and counted, and the stream
draws a substitute image and, with its new seed, new partners). A record that can give no
piece at all (every box too small and no room for a background crop) also gives None.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.common import DatasetFromList

from ...data.box_ops import resize_antialiased
from ...data.decode import ImageReadError, decode_image
from ...data.mapper_base import PretrainMapper, read_file_bytes
from .layout import aspect_group, choose_layout, region_map
from .samples import draw_piece

__all__ = ["MontageDatasetMapper", "NUM_PIECES"]

#: Pieces per montage (spec: four).
NUM_PIECES = 4
# Partner records tried for one piece before the montage is given up (returns None).
_PARTNER_TRIES = 8


class MontageDatasetMapper(PretrainMapper):
    """Builds one montage per call (module docstring) from sample records (``samples.py``).

    Args:
        records: every sample record of the training set (partners are drawn from them).
        image_format: channel order of the output, "RGB" or "BGR".
        canvas_size, min_region_size: the canvas and the smallest region side, in pixels.
        num_classes: NUM_CLASSES; the background label is this value.
        background_prob, context, background_scale, group_bounds, background_tries,
        min_box_size: how pieces are drawn (``samples.draw_piece``).
        flip_prob: horizontal flip probability of each piece.
    """

    @configurable
    def __init__(self, records: Sequence[dict], *, image_format: str = "RGB",
                 canvas_size: int = 224, min_region_size: int = 32, num_classes: int = 80,
                 background_prob: float = 0.25, context=(0.0, 0.3), background_scale=(0.02, 0.25),
                 group_bounds=(0.5, 1.5), background_tries: int = 20, min_box_size: int = 8,
                 flip_prob: float = 0.5):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR' for Montage, got {image_format!r}")
        if len(records) == 0:
            raise ValueError("Montage needs at least one training record")
        self.records = records if isinstance(records, DatasetFromList) else \
            DatasetFromList(list(records), copy=False, serialize=True)
        self.image_format = image_format
        self.canvas = int(canvas_size)
        self.min_region = int(min_region_size)
        self.background_label = int(num_classes)
        self.group_bounds = tuple(group_bounds)
        self.piece_args = dict(
            background_prob=float(background_prob), context=tuple(context),
            background_scale=tuple(background_scale), group_bounds=self.group_bounds,
            background_tries=int(background_tries), min_box_size=int(min_box_size),
        )
        self.flip_prob = float(flip_prob)

    @classmethod
    def from_config(cls, cfg, records):
        s = cfg.INPUT.MONTAGE
        return {
            "records": records,
            "image_format": cfg.INPUT.FORMAT,
            "canvas_size": s.CANVAS_SIZE,
            "min_region_size": s.MIN_REGION_SIZE,
            "num_classes": cfg.MODEL.MONTAGE.NUM_CLASSES,
            "background_prob": s.BACKGROUND_PROB,
            "context": s.CONTEXT,
            "background_scale": s.BACKGROUND_SCALE,
            "group_bounds": s.GROUP_BOUNDS,
            "background_tries": s.BACKGROUND_TRIES,
            "min_box_size": s.MIN_BOX_SIZE,
            "flip_prob": s.FLIP_PROB,
        }

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _read(record: dict) -> np.ndarray:
        try:
            return decode_image(read_file_bytes(record["file_name"]))
        except ImageReadError as e:  # name the file: it may be a partner's
            raise ImageReadError(e.reason, f"{record['file_name']}: {e.detail}") from e

    def _piece(self, record: dict, rng) -> Optional[dict]:
        img = self._read(record)
        piece = draw_piece(record, img.shape[1], img.shape[0], rng, **self.piece_args)
        if piece is None:
            return None
        x0, y0, x1, y1 = piece["crop"]
        pixels = img[y0:y1, x0:x1]
        if rng.random_sample() < self.flip_prob:
            pixels = pixels[:, ::-1]
        label = self.background_label if piece["box"] < 0 else piece["label"]
        return {"pixels": pixels, "label": label, "ref": (record["index"], piece["box"]),
                "crop": piece["crop"], "image_id": record["image_id"]}

    def _map(self, record: dict) -> Optional[dict]:
        rng = np.random  # seeded for this call by PretrainMapper
        pieces = [self._piece(record, rng)]
        if pieces[0] is None:
            return None
        for _ in range(NUM_PIECES - 1):
            for _ in range(_PARTNER_TRIES):
                piece = self._piece(self.records[int(rng.randint(len(self.records)))], rng)
                if piece is not None:
                    break
            else:
                return None
            pieces.append(piece)
        pieces = [pieces[i] for i in rng.permutation(NUM_PIECES)]

        aspects = [p["pixels"].shape[1] / p["pixels"].shape[0] for p in pieces]
        rects = choose_layout(aspects, self.canvas, self.min_region, self.group_bounds)
        canvas = np.empty((self.canvas, self.canvas, 3), np.uint8)
        for p, (x0, y0, x1, y1) in zip(pieces, rects):
            canvas[y0:y1, x0:x1] = resize_antialiased(np.ascontiguousarray(p["pixels"]), x1 - x0, y1 - y0)
        if self.image_format == "RGB":
            canvas = canvas[:, :, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))),
            "regions": torch.from_numpy(region_map(rects, self.canvas)),
            "labels": torch.tensor([p["label"] for p in pieces], dtype=torch.int64),
            "refs": torch.tensor([p["ref"] for p in pieces], dtype=torch.int64),
            "groups": torch.tensor([aspect_group(a, self.group_bounds) for a in aspects], dtype=torch.int64),
            "crops": torch.tensor([p["crop"] for p in pieces], dtype=torch.float32),
            "file_name": record["file_name"],
            "image_id": record["image_id"],
        }
