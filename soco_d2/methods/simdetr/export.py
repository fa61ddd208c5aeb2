"""What SimDETR hands to a detector: its declaration for the shared exporter (soco_d2/export.py).

Module names are Detectron2's (the model is a GeneralizedRCNN, ``meta_arch.py``), so nothing is
renamed:

- kept: ``backbone.*`` (ResNet and FPN), ``proposal_generator.*`` (the whole RPN) and
  ``roi_heads.box_head.*``; and ``roi_heads.box_predictor.bbox_pred.*`` when pretraining
  regressed class-agnostically (MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True, our configs): it
  loads into a detector that fine-tunes class-agnostically too; a stock class-specific detector
  (4 x its classes outputs) skips it for its shape, with Detectron2's warning, and starts its
  regressor at random, as it does its classifier;
- dropped: the pseudo-class classifier ``roi_heads.box_predictor.cls_score.*`` (K + 1 outputs,
  meaningless for real classes), a class-specific regressor (4 K outputs), and ``simdetr_round``,
  the buffer that marks a SimDETR checkpoint.

A stock Faster R-CNN or Mask R-CNN with the same trunk therefore loads backbone, FPN, RPN and box
head with no missing key (its mask head starts random).
"""
from ...export import ExportSpec

__all__ = ["KEEP", "REGRESSION", "MARK", "simdetr_export"]

KEEP = ("backbone.", "proposal_generator.", "roi_heads.box_head.")
REGRESSION = ("roi_heads.box_predictor.bbox_pred.",)
#: The buffer only a SimDETR model has (the round it trains).
MARK = ("simdetr_round",)


def simdetr_export(class_agnostic_regression: bool = True) -> ExportSpec:
    """The declaration, with the box regressor when it is class-agnostic."""
    return ExportSpec(method="SimDETRRCNN", keep=KEEP + (REGRESSION if class_agnostic_regression else ()),
                      marks=MARK)
