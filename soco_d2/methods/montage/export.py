"""What Montage hands to a detector: its declaration for the shared exporter (soco_d2/export.py).

Montage pretrains the backbone only (spec: "Export: the backbone only"), a Detectron2 ResNet
named ``backbone.*`` exactly as in a detector built with ``build_resnet_backbone``:

- kept: ``backbone.*`` (stem, res2 ... res5), under its own names;
- also written, as aliases of the same tensors (stored once in the file), under the names other
  stock detectors give them: ``backbone.bottom_up.*`` (``build_resnet_fpn_backbone``: FPN
  detectors, RetinaNet) and ``roi_heads.res5.*`` (C4 detectors keep res5 in their box head). So
  one ``model_final_trunk.pth`` loads by name into C4 and FPN detectors alike; each reports the
  other's names as unused keys, and the FPN's own layers (``backbone.fpn_*``) start random;
- dropped: ``dense_classifier.*`` (:data:`MONTAGE_ONLY_PREFIXES`, which marks a Montage
  checkpoint).
"""
from ...export import ExportSpec

__all__ = ["MONTAGE_ONLY_PREFIXES", "BACKBONE_ALIASES", "MONTAGE_EXPORT"]

# Pretraining-only parts of a Montage model: they exist in no detector.
MONTAGE_ONLY_PREFIXES = ("dense_classifier.",)
# Where stock Detectron2 detectors other than a plain ResNet keep the same weights.
BACKBONE_ALIASES = (("backbone.", "backbone.bottom_up."), ("backbone.res5.", "roi_heads.res5."))

MONTAGE_EXPORT = ExportSpec(
    method="Montage", keep=("backbone.",), marks=MONTAGE_ONLY_PREFIXES, aliases=BACKBONE_ALIASES,
)
