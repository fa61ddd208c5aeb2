"""What SoCo hands to a detector: its declaration for the shared exporter (soco_d2/export.py).

SoCo's module names are Detectron2's (see :mod:`.meta_arch`), so the online trunk loads by name
into a stock GeneralizedRCNN and no key is renamed:

- kept: ``backbone.*`` (ResNet + FPN) and ``roi_heads.box_head.*`` (FPN, 4conv1fc) or
  ``roi_heads.res5.*`` (C4), i.e. :data:`ONLINE_TRUNK_PREFIXES`;
- dropped: ``projector.*``, ``predictor.*`` and the momentum target ``target.*``
  (:data:`SOCO_ONLY_PREFIXES`, the parts that mark a SoCo checkpoint).
"""
from ...export import ExportSpec
from .meta_arch import ONLINE_TRUNK_PREFIXES

__all__ = ["ONLINE_TRUNK_PREFIXES", "SOCO_ONLY_PREFIXES", "SOCO_EXPORT"]

# Pretraining-only parts of a SoCo model: they exist in no detector.
SOCO_ONLY_PREFIXES = ("projector.", "predictor.", "target.")

SOCO_EXPORT = ExportSpec(method="SoCo", keep=ONLINE_TRUNK_PREFIXES, marks=SOCO_ONLY_PREFIXES)
