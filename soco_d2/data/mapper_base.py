"""What every pretraining mapper does around its own mapping: the per-sample seed, skipping
unreadable images, reading the file, and cleaning a record's proposal boxes.

A method's mapper subclasses :class:`PretrainMapper` and implements ``_map(record) -> dict``;
``mapper(record, seed=words)`` is then the contract of :func:`soco_d2.data.loader.build_pretrain_loader`.
"""
import logging
from typing import Optional, Tuple

import numpy as np
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .box_ops import clip_boxes
from .decode import ImageReadError

__all__ = ["PretrainMapper", "read_file_bytes", "record_proposals"]

logger = logging.getLogger(__name__)


def read_file_bytes(path: str) -> bytes:
    """The bytes of an image file (any PathManager path).

    Raises:
        ImageReadError: the file cannot be opened or read ("unreadable").
    """
    try:
        with PathManager.open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageReadError("unreadable", f"cannot read the file ({e})") from e


def record_proposals(record: dict, width: float, height: float) -> Tuple[np.ndarray, np.ndarray]:
    """The record's ``proposal_boxes`` as float32 XYXY_ABS clipped to the image.

    Returns:
        ``(boxes, index)``: the finite boxes, clipped (a side may become 0), and their (int64)
        indices in the record's list. Boxes with a NaN / infinite coordinate are left out
        (``len(record boxes) - len(index)`` of them).
    """
    props = np.asarray(record.get("proposal_boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    mode = record.get("proposal_bbox_mode", BoxMode.XYXY_ABS)
    if mode != BoxMode.XYXY_ABS and len(props):
        props = np.asarray(BoxMode.convert(props, mode, BoxMode.XYXY_ABS), np.float32)
    index = np.flatnonzero(np.isfinite(props).all(axis=1))
    return clip_boxes(props[index], width, height, min_size=0.0), index.astype(np.int64)


class PretrainMapper:
    """Base of the pretraining mappers: ``mapper(record, seed=None) -> dict or None``.

    Randomness: numpy's global RNG, or, when a ``seed`` is passed (the training loader does,
    see ``soco_d2/data/sample_stream.py``), an RNG seeded by it for this one call (the global
    state is restored afterwards), so a sample is a pure function of (record, seed). An image
    that cannot be read (:class:`ImageReadError`) maps to None, logged with the running count
    :attr:`num_skipped` (per process: each loader worker holds its own copy).
    """

    num_skipped = 0

    def _map(self, record: dict) -> dict:
        raise NotImplementedError

    def __call__(self, record: dict, seed=None) -> Optional[dict]:
        """Map one record; None when its image cannot be read (logged and counted).

        Args:
            record: a pretraining record (``soco_d2/data/pretrain_datasets.py``).
            seed: None (numpy's global RNG) or an int / sequence of uint32 words.
        """
        if seed is None:
            return self._map_or_skip(record)
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            return self._map_or_skip(record)
        finally:
            np.random.set_state(state)

    def _map_or_skip(self, record: dict) -> Optional[dict]:
        try:
            return self._map(record)
        except ImageReadError as e:
            self.num_skipped += 1
            logger.warning(
                f"Skipping unreadable image {record['file_name']} (id {record.get('image_id')}): "
                f"{e}. {self.num_skipped} image(s) skipped so far in this process."
            )
            return None
