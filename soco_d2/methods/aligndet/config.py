"""All configuration keys AlignDet adds to Detectron2, in one place, and the checks of their values.

Spec items are those of ALIGNDET_SPEC.md (sections: Pseudo-boxes, Views, Networks, Assignment,
Losses, Export). Items Detectron2 already has a key for keep that key, set in
``configs/aligndet/Base-AlignDet-*.yaml``:

- RPN assignment (Assignment): ``MODEL.RPN.IOU_THRESHOLDS`` (0.3, 0.7; low-quality matches are
  Detectron2's default), ``MODEL.RPN.BATCH_SIZE_PER_IMAGE`` 4096, ``MODEL.RPN.POSITIVE_FRACTION``
  1.0 (positives first, negatives fill the rest);
- RoI assignment: ``MODEL.ROI_HEADS.IOU_THRESHOLDS`` (0.5), ``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT``
  (pseudo-boxes added to the proposals), ``MODEL.ROI_HEADS.POSITIVE_FRACTION`` 1.0 (the
  foreground RoIs, up to ``BATCH_SIZE_PER_IMAGE``; background RoIs are dropped),
  ``MODEL.ROI_HEADS.NUM_CLASSES`` 1 (class-agnostic);
- RetinaNet assignment: ``MODEL.RETINANET.IOU_THRESHOLDS`` (0.4, 0.5);
- L1 regression: ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`` / ``MODEL.RETINANET.SMOOTH_L1_LOSS_BETA`` 0;
- the schedule (Schedule): ``SOLVER.*`` with the shared ``SOLVER.OPTIMIZER`` "SGD",
  ``SOLVER.EPOCHS`` and ``SOLVER.STEP_EPOCHS`` (``soco_d2/config/common.py``).
"""
from detectron2.config import CfgNode as CN

from ...config.checks import common_problems, raise_problems
from ...config.common import add_common_config
from ...data.color_augment import PHOTOMETRIC_OPS

__all__ = ["META_ARCHITECTURES", "add_aligndet_config", "validate_aligndet_config"]

#: The meta-architectures of AlignDet pretraining: R-CNN (Faster / Mask R-CNN FPN) and RetinaNet.
META_ARCHITECTURES = ("AlignDetRCNN", "AlignDetRetinaNet")


def add_aligndet_config(cfg):
    """Add AlignDet's keys (and the shared ones) to a Detectron2 config (in place) and return
    it. Idempotent: values already set are kept."""
    add_common_config(cfg)
    if "ALIGNDET" in cfg.MODEL:
        return cfg
    _C = cfg

    # ---------------------------------------------------------------- views (Views)
    _C.INPUT.ALIGNDET = CN()
    # Short side of each view, drawn independently per view from this list (Views: 640..800).
    _C.INPUT.ALIGNDET.MIN_SIZES = (640, 672, 704, 736, 768, 800)
    # Cap on the long side of a view (Views: 1333); 0: no cap.
    _C.INPUT.ALIGNDET.MAX_SIZE = 1333
    # Horizontal flip probability, independent per view (Views: 0.5).
    _C.INPUT.ALIGNDET.FLIP_PROB = 0.5
    # One of these photometric ops per view, picked uniformly (Views: the nine ops).
    _C.INPUT.ALIGNDET.PHOTOMETRIC_OPS = PHOTOMETRIC_OPS
    # Factor range of color / contrast / brightness / sharpness (1 = unchanged; RandAugment's
    # full range, not stated in the spec).
    _C.INPUT.ALIGNDET.ENHANCE_RANGE = (0.1, 1.9)
    # Bits kept by posterize, both ends included (not stated in the spec).
    _C.INPUT.ALIGNDET.POSTERIZE_BITS = (4, 8)
    # Threshold range of solarize (256: unchanged; not stated in the spec).
    _C.INPUT.ALIGNDET.SOLARIZE_RANGE = (0.0, 256.0)

    # ---------------------------------------------------------------- pseudo-boxes
    # Pseudo-box filter in original-image pixels (Pseudo-boxes): w, h >= MIN_BOX_SIZE.
    _C.INPUT.ALIGNDET.MIN_BOX_SIZE = 32.0
    # ... and 1 / MAX_ASPECT_RATIO <= w / h <= MAX_ASPECT_RATIO (Pseudo-boxes: 3).
    _C.INPUT.ALIGNDET.MAX_ASPECT_RATIO = 3.0
    # ... and sqrt(box area / image area) <= MAX_BOX_SCALE (Pseudo-boxes: 0.8).
    _C.INPUT.ALIGNDET.MAX_BOX_SCALE = 0.8
    # Top-K: keep the first K boxes that pass, in proposal-file order (Pseudo-boxes: 50 for
    # RetinaNet / FCOS); 0 keeps all.
    _C.INPUT.ALIGNDET.MAX_BOXES = 0

    # ---------------------------------------------------------------- networks (Networks)
    _C.MODEL.ALIGNDET = CN()
    # Backbone (MODEL.WEIGHTS) frozen: FrozenBN, no gradient, shared by online and target
    # (Networks). False: trained, with its own momentum copy (ablation).
    _C.MODEL.ALIGNDET.FREEZE_BACKBONE = True
    # A fresh run takes only the backbone (backbone.bottom_up.*) from MODEL.WEIGHTS; FPN, RPN
    # and heads start at Detectron2's initialisation, as in the method, whose first stage is a
    # backbone (Idea). False: also load the FPN and box head a SoCo trunk has (ablation).
    # Measured on the CPU demo: the SoCo demo trunk's FPN and box head (collapsed) start AlignDet
    # with 42% dead box-head units and probe knn_head 0.21, random ones with 0% and 0.46-0.50.
    _C.MODEL.ALIGNDET.LOAD_BACKBONE_ONLY = True
    # Momentum of the target detector at the first iteration, rising to 1 on a cosine
    # (Networks: 0.996).
    _C.MODEL.ALIGNDET.MOMENTUM = 0.996
    # R-CNN: the projection MLP that replaces the classifier, fc(PROJ_HIDDEN_DIM) -> ReLU ->
    # fc(EMBED_DIM), on the box head's output (Networks: 1024, 256).
    _C.MODEL.ALIGNDET.PROJ_HIDDEN_DIM = 1024
    _C.MODEL.ALIGNDET.EMBED_DIM = 256
    # RetinaNet: the classification conv becomes 1x1 conv(DENSE_PROJ_HIDDEN_DIM) -> ReLU ->
    # 1x1 conv to A x EMBED_DIM (Networks); 0: the head's own channels (not stated in the spec).
    _C.MODEL.ALIGNDET.DENSE_PROJ_HIDDEN_DIM = 0

    # ---------------------------------------------------------------- losses (Losses)
    # InfoNCE temperature (Losses: 0.5).
    _C.MODEL.ALIGNDET.TEMPERATURE = 0.5
    # Weight of the InfoNCE loss (Losses: 1).
    _C.MODEL.ALIGNDET.CONTRAST_WEIGHT = 1.0
    # Class-agnostic L1 regression of foreground RoIs / positive anchors to their pseudo-box,
    # and its weight (Losses: on, 1). False: no regression loss (ablation).
    _C.MODEL.ALIGNDET.REGRESSION = True
    _C.MODEL.ALIGNDET.REGRESSION_WEIGHT = 1.0
    # RetinaNet: anchors sampled per image, positives first (Assignment: 2048).
    _C.MODEL.ALIGNDET.DENSE_NUM_SAMPLES = 2048

    # ---------------------------------------------------------------- export (Export)
    # Also export the box regression layer (roi_heads.box_predictor.bbox_pred / head.bbox_pred);
    # it loads into class-agnostic detectors (MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True).
    _C.MODEL.ALIGNDET.EXPORT_REGRESSION = False
    return cfg


# ------------------------------------------------------------------------------------ checks


def _range_problem(key: str, value, lo: float, hi: float):
    a, b = value
    if not lo <= a <= b <= hi:
        return f"{key} must satisfy {lo} <= lo <= hi <= {hi}, got {tuple(value)}"
    return None


def validate_aligndet_config(cfg) -> None:
    """Check the values of AlignDet's keys and of the Detectron2 keys its models rely on.

    Called by ``train_net.setup`` (values only; the data on disk is checked by the trainer).

    Raises:
        ConfigError: listing every wrong value with its full key.
    """
    problems = []
    i, m = cfg.INPUT.ALIGNDET, cfg.MODEL.ALIGNDET
    if not i.MIN_SIZES or min(i.MIN_SIZES) < 32:
        problems.append(f"INPUT.ALIGNDET.MIN_SIZES must list short sides >= 32, got {tuple(i.MIN_SIZES)}")
    if i.MAX_SIZE != 0 and i.MAX_SIZE < 32:
        problems.append(f"INPUT.ALIGNDET.MAX_SIZE must be >= 32, or 0 for no cap; got {i.MAX_SIZE}")
    if not 0 <= i.FLIP_PROB <= 1:
        problems.append(f"INPUT.ALIGNDET.FLIP_PROB must be in [0, 1], got {i.FLIP_PROB}")
    unknown = [op for op in i.PHOTOMETRIC_OPS if op not in PHOTOMETRIC_OPS]
    if unknown or not i.PHOTOMETRIC_OPS:
        problems.append(
            f"INPUT.ALIGNDET.PHOTOMETRIC_OPS must be a non-empty list of {list(PHOTOMETRIC_OPS)}; "
            f"unknown: {unknown}" if unknown else "INPUT.ALIGNDET.PHOTOMETRIC_OPS is empty (use ('identity',))"
        )
    for key, lo, hi in (("ENHANCE_RANGE", 0, 10), ("POSTERIZE_BITS", 1, 8), ("SOLARIZE_RANGE", 0, 256)):
        p = _range_problem(f"INPUT.ALIGNDET.{key}", i[key], lo, hi)
        if p:
            problems.append(p)
    if i.MIN_BOX_SIZE < 0:
        problems.append(f"INPUT.ALIGNDET.MIN_BOX_SIZE must be >= 0, got {i.MIN_BOX_SIZE}")
    if i.MAX_ASPECT_RATIO < 1:
        problems.append(f"INPUT.ALIGNDET.MAX_ASPECT_RATIO must be >= 1, got {i.MAX_ASPECT_RATIO}")
    if not 0 < i.MAX_BOX_SCALE <= 1:
        problems.append(f"INPUT.ALIGNDET.MAX_BOX_SCALE must be in (0, 1], got {i.MAX_BOX_SCALE}")
    if i.MAX_BOXES < 0:
        problems.append(f"INPUT.ALIGNDET.MAX_BOXES (top-K) must be >= 0 (0: all), got {i.MAX_BOXES}")

    if not 0 <= m.MOMENTUM <= 1:
        problems.append(f"MODEL.ALIGNDET.MOMENTUM must be in [0, 1], got {m.MOMENTUM}")
    if m.TEMPERATURE <= 0:
        problems.append(f"MODEL.ALIGNDET.TEMPERATURE must be > 0, got {m.TEMPERATURE}")
    for key in ("PROJ_HIDDEN_DIM", "EMBED_DIM", "DENSE_NUM_SAMPLES"):
        if m[key] < 1:
            problems.append(f"MODEL.ALIGNDET.{key} must be >= 1, got {m[key]}")
    if m.DENSE_PROJ_HIDDEN_DIM < 0:
        problems.append(f"MODEL.ALIGNDET.DENSE_PROJ_HIDDEN_DIM must be >= 0 (0: the head's channels), "
                        f"got {m.DENSE_PROJ_HIDDEN_DIM}")
    for key in ("CONTRAST_WEIGHT", "REGRESSION_WEIGHT"):
        if m[key] < 0:
            problems.append(f"MODEL.ALIGNDET.{key} must be >= 0, got {m[key]}")
    if m.FREEZE_BACKBONE and "fpn" not in cfg.MODEL.BACKBONE.NAME:
        problems.append(
            f"MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}: AlignDet freezes the bottom-up "
            "network of an FPN backbone (e.g. build_resnet_fpn_backbone); set "
            "MODEL.ALIGNDET.FREEZE_BACKBONE False to train another backbone whole"
        )

    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "AlignDetRCNN":
        problems += _rcnn_problems(cfg)
    elif arch not in META_ARCHITECTURES:
        problems.append(f"MODEL.META_ARCHITECTURE must be one of {list(META_ARCHITECTURES)}, got {arch!r}")
    problems += common_problems(cfg)
    raise_problems(problems, "Invalid AlignDet config")


def _rcnn_problems(cfg):
    """What the R-CNN meta-architecture needs: an RPN, StandardROIHeads with one class, no
    mask or keypoint head (they are not pretrained: Faster and Mask R-CNN share the weights)."""
    m, problems = cfg.MODEL, []
    if m.PROPOSAL_GENERATOR.NAME != "RPN":
        problems.append(f"MODEL.PROPOSAL_GENERATOR.NAME must be 'RPN', got {m.PROPOSAL_GENERATOR.NAME!r}")
    if m.ROI_HEADS.NAME != "StandardROIHeads":
        problems.append(
            f"MODEL.ROI_HEADS.NAME must be 'StandardROIHeads' (FPN box head), got {m.ROI_HEADS.NAME!r}"
        )
    if m.ROI_HEADS.NUM_CLASSES != 1:
        problems.append(
            f"MODEL.ROI_HEADS.NUM_CLASSES must be 1 (pseudo-boxes have one class), got {m.ROI_HEADS.NUM_CLASSES}"
        )
    for key in ("MASK_ON", "KEYPOINT_ON", "LOAD_PROPOSALS"):
        if m[key]:
            problems.append(
                f"MODEL.{key} must be False for AlignDet pretraining (mask and keypoint heads are "
                "not pretrained; Faster and Mask R-CNN fine-tune from the same weights)"
                if key != "LOAD_PROPOSALS" else
                "MODEL.LOAD_PROPOSALS must be False: AlignDet's proposals come from its own RPN, "
                "its pseudo-boxes from the dataset's proposal file"
            )
    return problems
