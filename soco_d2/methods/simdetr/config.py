"""All configuration keys SimDETR pretraining adds to Detectron2, in one place, and their checks.

SimDETR (Metaxas et al., arXiv 2307.15697, "Aligned Unsupervised Pretraining of Object Detectors
with Self-training"): the detector itself is trained with its own detection loss on pseudo-boxes
(semantic proposals, ``soco_d2/data/proposals/semantic.py``, or selective search) with
pseudo-classes (k-means of their box features), then on its own confident detections, round
after round. Keys Detectron2 already has keep their meaning and are reused:

- K, the number of pseudo-classes: ``MODEL.ROI_HEADS.NUM_CLASSES`` (the classifier they train);
- the detector: ``MODEL.*`` of a Faster R-CNN FPN (``configs/simdetr/Base-SimDETR-*.yaml``), its
  regression ``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG`` (True in our configs, so the regressor
  is exported, ``export.py``);
- the training views: ``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` / ``RANDOM_FLIP``
  (Detectron2's DatasetMapper); the views that are clustered and detected on between rounds:
  ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``; detections per image before our thresholds:
  ``TEST.DETECTIONS_PER_IMAGE``;
- the schedule: ``SOLVER.*`` is ONE round's (iterations, warmup, steps); a run is
  ``MODEL.SIMDETR.ROUNDS`` times it, the learning rate schedule restarting with each round.

"Paper" marks what the paper states; everything else is ours (the paper's text we follow does
not give it), said in ``docs/methods/simdetr.md``.
"""
from detectron2.config import CfgNode as CN

from ...config.checks import common_problems, enum_problems, raise_problems
from ...config.common import add_common_config
from ...data.proposals.semantic import FEATURES

__all__ = ["META_ARCHITECTURE", "CLASS_MODES", "add_simdetr_config", "validate_simdetr_config"]

#: The meta-architecture: Detectron2's GeneralizedRCNN under SimDETR's name (``meta_arch.py``).
META_ARCHITECTURE = "SimDETRRCNN"
#: MODEL.SIMDETR.CLASSES: the class of a self-training box is the detector's prediction
#: ("keep") or its cluster in a new k-means of the new boxes' features ("recluster").
CLASS_MODES = ("keep", "recluster")


def add_simdetr_config(cfg):
    """Add SimDETR's keys (and the shared ones) to a Detectron2 config (in place) and return it.
    Idempotent: values already set are kept."""
    add_common_config(cfg)
    if "SIMDETR" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.SIMDETR = CN()
    # Training rounds R (paper: self-training rounds after the first): round 0 trains on the
    # proposals of DATASETS.TRAIN as pseudo-boxes, round r >= 1 on the confident detections of
    # the detector after round r - 1. Each round runs the SOLVER schedule once.
    _C.MODEL.SIMDETR.ROUNDS = 1
    # A fresh run takes only the ResNet (backbone.bottom_up.*) from MODEL.WEIGHTS (paper: the
    # detector starts from a self-supervised backbone); False: also its FPN and box head.
    _C.MODEL.SIMDETR.LOAD_BACKBONE_ONLY = True

    # ---------------------------------------------------------------- pseudo-labels (round 0)
    # Pseudo-boxes of an image in round 0: its first MAX_BOXES proposals (highest objectness);
    # an image without any gets the whole image. Also the most boxes a later round keeps.
    _C.MODEL.SIMDETR.MAX_BOXES = 30
    # The ResNet map whose RoIAligned (7 x 7, averaged) features are clustered into the K
    # pseudo-classes (paper: the self-supervised backbone's features): "res4" or "res5".
    _C.MODEL.SIMDETR.FEATURE = "res4"
    # k-means: at most this many Lloyd iterations; fitted on at most FIT_SAMPLES boxes (a
    # random subset), then every box is assigned to its nearest centroid.
    _C.MODEL.SIMDETR.KMEANS_ITERS = 30
    _C.MODEL.SIMDETR.FIT_SAMPLES = 100000
    # A round-0 pseudo-label json (tools/make_pseudo_labels.py) to train on instead of computing
    # it at start; "" computes it (written to OUTPUT_DIR/pseudo_labels/round_0.json).
    _C.MODEL.SIMDETR.PSEUDO_LABELS = ""

    # ---------------------------------------------------------------- self-training (rounds >= 1)
    # A detection of the detector becomes a pseudo-box of the next round if its score is at
    # least SCORE_THRESH, after class-agnostic NMS at IoU NMS_THRESH (at most MAX_BOXES per
    # image); an image left with none keeps its boxes of the previous round.
    _C.MODEL.SIMDETR.SCORE_THRESH = 0.3
    _C.MODEL.SIMDETR.NMS_THRESH = 0.5
    # Class of a new box: the detector's prediction ("keep") or a new k-means of the new boxes'
    # features, its clusters matched to the previous classes by overlapping boxes ("recluster").
    _C.MODEL.SIMDETR.CLASSES = "keep"
    # Images per forward when embedding and detecting between rounds (per process).
    _C.MODEL.SIMDETR.BATCH_SIZE = 4
    return cfg


def validate_simdetr_config(cfg) -> None:
    """Check the values of SimDETR's keys and of the Detectron2 keys its model relies on.

    Called by ``train_net.setup`` (values only; the data on disk is checked by the trainer).

    Raises:
        ConfigError: listing every wrong value with its full key.
    """
    s, m = cfg.MODEL.SIMDETR, cfg.MODEL
    problems = enum_problems(cfg, (("MODEL.SIMDETR.CLASSES", CLASS_MODES),
                                   ("MODEL.SIMDETR.FEATURE", tuple(FEATURES))))
    for key in ("ROUNDS", "MAX_BOXES", "KMEANS_ITERS", "FIT_SAMPLES", "BATCH_SIZE"):
        if s[key] < 1:
            problems.append(f"MODEL.SIMDETR.{key} must be >= 1, got {s[key]}")
    for key in ("SCORE_THRESH", "NMS_THRESH"):
        if not 0 <= s[key] <= 1:
            problems.append(f"MODEL.SIMDETR.{key} must be in [0, 1], got {s[key]}")
    if s.FIT_SAMPLES < m.ROI_HEADS.NUM_CLASSES:
        problems.append(f"MODEL.SIMDETR.FIT_SAMPLES ({s.FIT_SAMPLES}) must be at least the number of "
                        f"pseudo-classes MODEL.ROI_HEADS.NUM_CLASSES ({m.ROI_HEADS.NUM_CLASSES})")
    if m.META_ARCHITECTURE != META_ARCHITECTURE:
        problems.append(f"MODEL.META_ARCHITECTURE must be {META_ARCHITECTURE!r}, got {m.META_ARCHITECTURE!r}")
    if m.PROPOSAL_GENERATOR.NAME != "RPN":
        problems.append(f"MODEL.PROPOSAL_GENERATOR.NAME must be 'RPN', got {m.PROPOSAL_GENERATOR.NAME!r}")
    if m.ROI_HEADS.NAME != "StandardROIHeads":
        problems.append(f"MODEL.ROI_HEADS.NAME must be 'StandardROIHeads' (FPN box head), got {m.ROI_HEADS.NAME!r}")
    if "fpn" not in m.BACKBONE.NAME:
        problems.append(f"MODEL.BACKBONE.NAME must be an FPN backbone (e.g. build_resnet_fpn_backbone), "
                        f"got {m.BACKBONE.NAME!r}: pseudo-classes are clustered from its ResNet (bottom_up)")
    if s.FEATURE not in m.RESNETS.OUT_FEATURES:
        problems.append(f"MODEL.SIMDETR.FEATURE {s.FEATURE!r} must be one of MODEL.RESNETS.OUT_FEATURES "
                        f"{list(m.RESNETS.OUT_FEATURES)}")
    if m.ROI_HEADS.NUM_CLASSES < 2:
        problems.append(f"MODEL.ROI_HEADS.NUM_CLASSES is K, the number of pseudo-classes: it must be >= 2, "
                        f"got {m.ROI_HEADS.NUM_CLASSES}")
    for key in ("MASK_ON", "KEYPOINT_ON", "LOAD_PROPOSALS"):
        if m[key]:
            problems.append(
                f"MODEL.{key} must be False for SimDETR pretraining: pseudo-labels are boxes, and the "
                "proposals of DATASETS.TRAIN are its pseudo-boxes, not RPN input" if key == "LOAD_PROPOSALS" else
                f"MODEL.{key} must be False for SimDETR pretraining (pseudo-labels have no masks or "
                "keypoints; Faster and Mask R-CNN fine-tune from the same weights)")
    problems += common_problems(cfg)
    raise_problems(problems, "Invalid SimDETR config")
