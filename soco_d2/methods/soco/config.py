"""All configuration keys SoCo adds to Detectron2, in one place, and the checks of their values.

Keys that Detectron2 already has keep their meaning and are reused (``MODEL.FPN.*``,
``MODEL.ROI_BOX_HEAD.*``, ``MODEL.ROI_HEADS.IN_FEATURES``, ``SOLVER.*``); the keys every
pretraining method shares (LARS, epochs, AMP dtype, datasets) are in
``soco_d2/config/common.py``. Section numbers refer to the paper as summarised in SOCO_SPEC.md.
"""
from detectron2.config import CfgNode as CN

from ...config.checks import common_problems, enum_problems, raise_problems
from ...config.common import add_common_config

__all__ = [
    "MIN_VIEW_SIZE", "VIEW3_MODES", "LEVEL_ASSIGNMENTS", "LOSSES", "add_soco_config", "validate_soco_config",
]


def add_soco_config(cfg):
    """Add SoCo's keys (and the shared ones) to a Detectron2 config (in place) and return it."""
    add_common_config(cfg)
    _C = cfg

    # ---------------------------------------------------------------- views (Sec. 2)
    _C.INPUT.SOCO = CN()
    # Side of V1, the whole image resized (Sec. 2).
    _C.INPUT.SOCO.VIEW1_SIZE = 224
    # Side of V2, a random resized crop (Sec. 2).
    _C.INPUT.SOCO.VIEW2_SIZE = 224
    # Side of V3 (112; 192 for SoCo*); 0: no V3 (the published R50-C4 run has V1 and V2 only).
    _C.INPUT.SOCO.VIEW3_SIZE = 112
    # How V3 is made: "crop" = its own random resized crop (published run),
    # "downsample" = V2 resized (paper text).
    _C.INPUT.SOCO.VIEW3_MODE = "crop"
    # Side of V4 = V2 resized (SoCo*, Sec. 2); 0 disables the fourth view.
    _C.INPUT.SOCO.VIEW4_SIZE = 0
    # Area scale range of the random resized crops (V2, V3).
    _C.INPUT.SOCO.CROP_SCALE = (0.5, 1.0)
    # Aspect-ratio range of the random resized crops (torchvision's default).
    _C.INPUT.SOCO.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    # Crops tried before padding with jittered copies when fewer than K proposals overlap.
    _C.INPUT.SOCO.CROP_RETRIES = 5
    # K: proposals per image (Sec. 2, K=4 best in the ablation).
    _C.INPUT.SOCO.NUM_PROPOSALS = 4
    # Fraction of a proposal's area that must fall inside a crop for it to count for that view.
    # 0: any overlap counts and the box is clipped to the crop (the authors' published run);
    # 0.5: the ablation "at least half of the box inside".
    _C.INPUT.SOCO.MIN_OVERLAP = 0.0
    # Box jitter on V1's boxes: probability and ratio r (Sec. 2).
    _C.INPUT.SOCO.BOX_JITTER_PROB = 0.5
    _C.INPUT.SOCO.BOX_JITTER_RATIO = 0.1
    # Horizontal flip probability, independent per view.
    _C.INPUT.SOCO.FLIP_PROB = 0.5
    # BYOL colour recipe: jitter probability and (brightness, contrast, saturation, hue).
    _C.INPUT.SOCO.COLOR_JITTER_PROB = 0.8
    _C.INPUT.SOCO.COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)
    _C.INPUT.SOCO.GRAYSCALE_PROB = 0.2
    # Gaussian blur probability for (V1, other views) and its sigma range.
    _C.INPUT.SOCO.BLUR_PROB = (1.0, 0.1)
    _C.INPUT.SOCO.BLUR_SIGMA = (0.1, 2.0)
    # Solarize probability for (V1, other views).
    _C.INPUT.SOCO.SOLARIZE_PROB = (0.0, 0.2)
    # Cutout at the boxes of V2/V3 (published FPN run; off for SoCo* and C4 has it on V2): per
    # box with this probability, a square of CUTOUT_AREA of the box's area centred in the box,
    # clipped to the image and filled with MODEL.PIXEL_MEAN (0 after normalisation).
    _C.INPUT.SOCO.CUTOUT_IN_BOX = True
    _C.INPUT.SOCO.CUTOUT_PROB = 0.5
    _C.INPUT.SOCO.CUTOUT_AREA = (0.1, 0.3)

    # ---------------------------------------------------------------- model (Sec. 3-6)
    _C.MODEL.SOCO = CN()
    # Which FPN level pools a box: "scale_aware" (Sec. 3, thresholds below), "canonical"
    # (Detectron2's rule, 224 px at P4) or "all" (every level, the authors' run).
    _C.MODEL.SOCO.LEVEL_ASSIGNMENT = "scale_aware"
    # Box-size thresholds sqrt(w*h) in view pixels: <=48 P2, <=96 P3, <=192 P4, else P5 (Sec. 3).
    _C.MODEL.SOCO.LEVEL_THRESHOLDS = (48, 96, 192)
    # Projector g: hidden width and output dimension D (Sec. 4).
    _C.MODEL.SOCO.PROJECTOR_HIDDEN_DIM = 4096
    _C.MODEL.SOCO.PROJECTOR_DIM = 256
    # Predictor q: hidden width (Sec. 4).
    _C.MODEL.SOCO.PREDICTOR_HIDDEN_DIM = 4096
    # Normalisation in projector and predictor ("BN", "SyncBN", "naiveSyncBN", "").
    _C.MODEL.SOCO.HEAD_NORM = "BN"
    # NHWC memory format for conv weights and images: same values, faster convolutions
    # (oneDNN on CPU, tensor cores on GPU).
    _C.MODEL.SOCO.CHANNELS_LAST = True
    # Start the last BN gamma of every residual block of the online trunk at 0, before the
    # target copy (published run; BYOL's and Goyal et al.'s "zero-init residual").
    _C.MODEL.SOCO.ZERO_INIT_RESIDUAL = True
    # tau_base of the target momentum schedule (Sec. 6).
    _C.MODEL.SOCO.MOMENTUM = 0.99
    # Object-level loss: "byol" (published: 2 - 2 cos, no negatives) or "infonce" (ablation:
    # the other objects of the batch in the other view are negatives, temperature below).
    _C.MODEL.SOCO.LOSS = "byol"
    _C.MODEL.SOCO.TEMPERATURE = 0.2
    # With "infonce": whether the other proposals of an object's own image are negatives too
    # (they overlap it; False leaves them out, so only other images' objects are negatives).
    _C.MODEL.SOCO.SAME_IMAGE_NEGATIVES = True
    # With "infonce": Q > 0 also takes the target projections of the objects of the last
    # iterations as negatives (MoCo's queue: a small batch has few negatives); 0: none kept.
    _C.MODEL.SOCO.QUEUE_SIZE = 0
    # Collapse guards on the online box features (loss.feature_spread_terms; not in the paper,
    # 0 = off): weight of the spread term (keeps box-head units from dying) and of the
    # decorrelation term (keeps the features' variance in many directions). Added to the loss
    # as loss_spread and loss_decorr, once per group of views of one size, over the objects of
    # the process's own batch.
    _C.MODEL.SOCO.SPREAD_WEIGHT = 0.0
    _C.MODEL.SOCO.DECORR_WEIGHT = 0.0
    return cfg


# ------------------------------------------------------------------------------------ checks

#: Smallest allowed view side. Rule: a view must hold one full cell of the coarsest feature map
#: that pools boxes (P5 / res5, stride 32), which is also the smallest box side SoCo's proposal
#: filter keeps (32 px); a smaller view cannot show such a box at its native size.
MIN_VIEW_SIZE = 32

#: Values of INPUT.SOCO.VIEW3_MODE and MODEL.SOCO.LEVEL_ASSIGNMENT (the mapper and the box
#: branch accept the same).
VIEW3_MODES = ("crop", "downsample")
LEVEL_ASSIGNMENTS = ("scale_aware", "canonical", "all")
#: Values of MODEL.SOCO.LOSS (the meta-architecture accepts the same).
LOSSES = ("byol", "infonce")

_ENUMS = (
    ("INPUT.SOCO.VIEW3_MODE", VIEW3_MODES),
    ("MODEL.SOCO.LEVEL_ASSIGNMENT", LEVEL_ASSIGNMENTS),
    ("MODEL.SOCO.LOSS", LOSSES),
    ("MODEL.SOCO.HEAD_NORM", ("BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "")),
)


def validate_soco_config(cfg) -> None:
    """Check the values of SoCo's keys and of the shared keys it relies on.

    Called by ``train_net.setup`` for SoCo configs (values only, so every config also loads on
    a machine without the data; the data on disk is checked by the trainer).

    Raises:
        ConfigError: listing every wrong value with its full key.
    """
    problems = []
    s = cfg.INPUT.SOCO
    if s.NUM_PROPOSALS < 1:
        problems.append(f"INPUT.SOCO.NUM_PROPOSALS (K) must be >= 1, got {s.NUM_PROPOSALS}")
    for key in ("VIEW1_SIZE", "VIEW2_SIZE", "VIEW3_SIZE", "VIEW4_SIZE"):
        size = s[key]
        if key in ("VIEW3_SIZE", "VIEW4_SIZE") and size == 0:
            continue  # no third / fourth view
        if size < MIN_VIEW_SIZE:
            off = f", or 0 for no V{key[4]}" if key in ("VIEW3_SIZE", "VIEW4_SIZE") else ""
            problems.append(
                f"INPUT.SOCO.{key} must be >= {MIN_VIEW_SIZE} (the stride of P5/res5 and the "
                f"smallest box side the proposal filter keeps){off}; got {size}"
            )
    problems += enum_problems(cfg, _ENUMS)

    if cfg.MODEL.SOCO.QUEUE_SIZE < 0:
        problems.append(f"MODEL.SOCO.QUEUE_SIZE must be >= 0, got {cfg.MODEL.SOCO.QUEUE_SIZE}")
    elif cfg.MODEL.SOCO.QUEUE_SIZE > 0 and cfg.MODEL.SOCO.LOSS != "infonce":
        problems.append("MODEL.SOCO.QUEUE_SIZE > 0 needs MODEL.SOCO.LOSS 'infonce' (a queue of "
                        f"negatives), got '{cfg.MODEL.SOCO.LOSS}'")
    if cfg.MODEL.SOCO.TEMPERATURE <= 0:
        problems.append(f"MODEL.SOCO.TEMPERATURE must be > 0, got {cfg.MODEL.SOCO.TEMPERATURE}")
    for key in ("SPREAD_WEIGHT", "DECORR_WEIGHT"):
        if cfg.MODEL.SOCO[key] < 0:
            problems.append(f"MODEL.SOCO.{key} must be >= 0 (0: off), got {cfg.MODEL.SOCO[key]}")
    t = list(cfg.MODEL.SOCO.LEVEL_THRESHOLDS)
    if not t or t[0] <= 0 or any(b <= a for a, b in zip(t, t[1:])):
        problems.append(
            f"MODEL.SOCO.LEVEL_THRESHOLDS must be positive and strictly increasing, got {tuple(t)}"
        )
    for key in ("CROP_SCALE", "CROP_RATIO"):
        lo, hi = s[key]
        upper = 1.0 if key == "CROP_SCALE" else float("inf")
        if not 0 < lo <= hi <= upper:
            rule = "0 < lo <= hi <= 1" if key == "CROP_SCALE" else "0 < lo <= hi"
            problems.append(f"INPUT.SOCO.{key} must satisfy {rule}, got {(lo, hi)}")
    for key in ("MIN_OVERLAP", "BOX_JITTER_PROB", "FLIP_PROB", "COLOR_JITTER_PROB",
                "GRAYSCALE_PROB", "CUTOUT_PROB"):
        if not 0 <= s[key] <= 1:
            problems.append(f"INPUT.SOCO.{key} must be in [0, 1], got {s[key]}")
    if not 0 <= cfg.MODEL.SOCO.MOMENTUM <= 1:
        problems.append(f"MODEL.SOCO.MOMENTUM must be in [0, 1], got {cfg.MODEL.SOCO.MOMENTUM}")
    problems += common_problems(cfg)
    raise_problems(problems, "Invalid SoCo config")
