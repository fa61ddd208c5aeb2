"""What AlignDet hands to a detector: its declarations for the shared exporter (soco_d2/export.py).

Module names are Detectron2's (see :mod:`.meta_arch`), so nothing is renamed:

- R-CNN (``AlignDetRCNN``): kept ``backbone.*`` (the frozen bottom-up network, as loaded from
  MODEL.WEIGHTS, and the trained FPN), ``proposal_generator.*`` (the whole RPN) and
  ``roi_heads.box_head.*``; with ``keep_regression`` also ``roi_heads.box_predictor.bbox_pred.*``
  (class-agnostic: it loads into detectors with MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True).
  A stock Faster R-CNN and a stock Mask R-CNN load the same file; their classifier (and mask
  head) start random.
- RetinaNet (``AlignDetRetinaNet``): kept ``backbone.*`` and ``head.cls_subnet.*``,
  ``head.bbox_subnet.*``; with ``keep_regression`` also ``head.bbox_pred.*``.
- dropped: the projection MLP (``roi_heads.box_predictor.cls_score.*`` / ``head.cls_score.*``,
  which also marks an AlignDet checkpoint) and the momentum target ``target.*``.
"""
from ...export import ExportSpec

__all__ = ["RCNN_KEEP", "RETINANET_KEEP", "REGRESSION_LAYERS", "aligndet_export"]

RCNN_KEEP = ("backbone.", "proposal_generator.", "roi_heads.box_head.")
RETINANET_KEEP = ("backbone.", "head.cls_subnet.", "head.bbox_subnet.")
#: The box regression layer of each meta-architecture (exported only when asked).
REGRESSION_LAYERS = {
    "AlignDetRCNN": ("roi_heads.box_predictor.bbox_pred.",),
    "AlignDetRetinaNet": ("head.bbox_pred.",),
}
# The projection MLP that replaces the classifier: no stock detector has these names.
_MARKS = {
    "AlignDetRCNN": ("roi_heads.box_predictor.cls_score.fc1.",),
    "AlignDetRetinaNet": ("head.cls_score.conv1.",),
}
_KEEP = {"AlignDetRCNN": RCNN_KEEP, "AlignDetRetinaNet": RETINANET_KEEP}


def aligndet_export(meta_architecture: str, keep_regression: bool = False) -> ExportSpec:
    """The declaration of ``meta_architecture`` ("AlignDetRCNN" or "AlignDetRetinaNet"), with
    or without the box regression layer (MODEL.ALIGNDET.EXPORT_REGRESSION)."""
    keep = _KEEP[meta_architecture] + (REGRESSION_LAYERS[meta_architecture] if keep_regression else ())
    return ExportSpec(method=meta_architecture, keep=keep, marks=_MARKS[meta_architecture])
