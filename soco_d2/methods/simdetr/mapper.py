"""SimDETR's training mapper: Detectron2's own ``DatasetMapper`` on the pseudo-label json's records.

Output: exactly ``DatasetMapper(cfg, is_train=True)``'s (``image`` uint8 (3, H, W) in
INPUT.FORMAT, resized by INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN, flipped by INPUT.RANDOM_FLIP;
``instances`` with ``gt_boxes`` and ``gt_classes``, the pseudo-classes), which is what a
GeneralizedRCNN trains on. Around it, what every pretraining mapper does
(:class:`~soco_d2.data.mapper_base.PretrainMapper`): the augmentation's numpy draws are seeded
per sample, so a resumed run sees the same views, and an image that cannot be read (Detectron2's
reader raises ``OSError``, or a size that disagrees with the json) maps to None, replaced
deterministically by the loader.
"""
from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from ...data.decode import ImageReadError
from ...data.mapper_base import PretrainMapper

__all__ = ["SimDETRDatasetMapper"]


class SimDETRDatasetMapper(PretrainMapper):
    """``mapper(record, seed=None) -> dict or None`` around ``DatasetMapper(cfg, is_train=True)``."""

    def __init__(self, cfg):
        self.mapper = DatasetMapper(cfg, is_train=True)

    def _map(self, record: dict) -> dict:
        try:
            return self.mapper(record)
        except (OSError, SizeMismatchError) as e:
            raise ImageReadError("unreadable", f"{type(e).__name__}: {e}") from e
