"""All configuration keys Montage pretraining adds to Detectron2, in one place, and their checks.

Keys Detectron2 already has keep their meaning and are reused (``MODEL.RESNETS.*``,
``MODEL.BACKBONE.*``, ``MODEL.PIXEL_MEAN``, ``INPUT.FORMAT``, ``SOLVER.*``); the keys every
pretraining method shares are in ``soco_d2/config/common.py``. "Spec" refers to the sections of
MONTAGE_SPEC.md (Samples, Montage assembly, ERF-adaptive dense classification); "ours" marks a
choice the spec leaves open, and the label-free variant is ours as a whole.
"""
import os

from detectron2.config import CfgNode as CN

from ...config.checks import ConfigError, common_problems, enum_problems, raise_problems
from ...config.common import add_common_config

__all__ = [
    "SAMPLE_SOURCES", "PSEUDO_FEATURES", "FEATURE_STRIDE", "add_montage_config",
    "validate_montage_config", "check_montage_files",
]

#: INPUT.MONTAGE.SAMPLES: ground-truth boxes with their classes (the paper) or the records'
#: selective-search proposals with k-means pseudo-classes (the label-free variant).
SAMPLE_SOURCES = ("gt", "proposals")
#: MODEL.MONTAGE.PSEUDO.FEATURES: which network's box features are clustered.
PSEUDO_FEATURES = ("model", "trunk")
#: Stride of res5 in Detectron2's ResNet (RES5_DILATION 1): the canvas side and every region
#: side are multiples / at least this, so that each region holds the centre of >= 1 location.
FEATURE_STRIDE = 32


def add_montage_config(cfg):
    """Add Montage's keys (and the shared ones) to a Detectron2 config (in place) and return it."""
    add_common_config(cfg)
    _C = cfg

    # ---------------------------------------------------------------- samples (spec: Samples)
    _C.INPUT.MONTAGE = CN()
    # Where samples come from: "gt" (ground-truth boxes, spec) or "proposals" (label-free, ours).
    _C.INPUT.MONTAGE.SAMPLES = "gt"
    # Context enlargement of a positive: each side moves out by U(lo, hi) times the box's width
    # (left, right) or height (top, bottom), clipped to the image (spec: "randomly enlarged";
    # range ours).
    _C.INPUT.MONTAGE.CONTEXT = (0.0, 0.3)
    # Boxes whose clipped width or height is below this many pixels are never a positive (ours).
    _C.INPUT.MONTAGE.MIN_BOX_SIZE = 8
    # Probability that a piece is a background crop, IoU 0 with every box (spec: negatives; rate ours).
    _C.INPUT.MONTAGE.BACKGROUND_PROB = 0.25
    # Area of a background crop as a fraction of the image, drawn uniformly in this range (ours).
    _C.INPUT.MONTAGE.BACKGROUND_SCALE = (0.02, 0.25)
    # Random placements tried for a background crop before the piece becomes a positive (ours).
    _C.INPUT.MONTAGE.BACKGROUND_TRIES = 20
    # Aspect-ratio groups w/h: tall T < lo <= square S <= hi < wide W (spec: 0.5 and 1.5).
    _C.INPUT.MONTAGE.GROUP_BOUNDS = (0.5, 1.5)
    # Horizontal flip probability of each piece (ours).
    _C.INPUT.MONTAGE.FLIP_PROB = 0.5
    # Label-free: the first P proposals of each record (highest objectness) are its samples (ours).
    _C.INPUT.MONTAGE.PROPOSALS_PER_IMAGE = 8
    # Use only the first N records of DATASETS.TRAIN; 0: all (ours: small CPU runs, where the
    # label-free variant embeds every sample at each refresh). Needs SOLVER.EPOCHS 0.
    _C.INPUT.MONTAGE.MAX_IMAGES = 0

    # ---------------------------------------------------------------- canvas (spec: Montage assembly)
    # Side of the square montage canvas in pixels (spec: "e.g. 224"); a multiple of 32 (res5 stride).
    _C.INPUT.MONTAGE.CANVAS_SIZE = 224
    # Smallest side of one of the four regions in pixels, >= 32 (ours, see FEATURE_STRIDE).
    _C.INPUT.MONTAGE.MIN_REGION_SIZE = 32

    # ---------------------------------------------------------------- model (spec: ERF-adaptive ...)
    _C.MODEL.MONTAGE = CN()
    # C - 1: the object classes (SAMPLES gt: the dataset's categories; SAMPLES proposals: k, the
    # number of k-means clusters); C = NUM_CLASSES + 1 logits, background last (spec).
    _C.MODEL.MONTAGE.NUM_CLASSES = 80
    # The backbone output classified at every location by the 1x1 conv (spec: res5, stride 32).
    _C.MODEL.MONTAGE.IN_FEATURE = "res5"
    # tau: floor of the own-region weight w_r = max(tau, sum(g m^r) / sum(g)) (spec; value ours).
    _C.MODEL.MONTAGE.TAU = 0.5
    # Standard deviation in input pixels of the Gaussian g that approximates a location's ERF
    # (spec: "about Gaussian"). 51 px: the ERF of freshly initialised Detectron2 R18 and R50 at
    # res5, measured with soco_d2.methods.montage.soft_labels.measure_erf_sigma.
    _C.MODEL.MONTAGE.ERF_SIGMA = 51.0

    # ---------------------------------------------------------------- label-free variant (ours)
    _C.MODEL.MONTAGE.PSEUDO = CN()
    # Whose box features are clustered: "model" (the backbone being trained, which starts from
    # MODEL.WEIGHTS, e.g. a SoCo trunk) or "trunk" (a frozen trunk: TRUNK_CONFIG + TRUNK_WEIGHTS).
    _C.MODEL.MONTAGE.PSEUDO.FEATURES = "model"
    # Config file and weights of the frozen trunk (FEATURES "trunk"): a SoCo pretraining config
    # (or any detector config) and its exported model_final_trunk.pth.
    _C.MODEL.MONTAGE.PSEUDO.TRUNK_CONFIG = ""
    _C.MODEL.MONTAGE.PSEUDO.TRUNK_WEIGHTS = ""
    # Iterations between re-clusterings (FEATURES "model"); 0: cluster once, before training.
    _C.MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD = 0
    # Lloyd iterations of each k-means run.
    _C.MODEL.MONTAGE.PSEUDO.KMEANS_ITERS = 30
    # k-means is fitted on at most this many boxes (drawn with the run's seed); every box is
    # then assigned to its nearest centroid.
    _C.MODEL.MONTAGE.PSEUDO.FIT_SAMPLES = 100000
    # Images per forward pass while the box features are extracted.
    _C.MODEL.MONTAGE.PSEUDO.BATCH_SIZE = 16
    return cfg


# ------------------------------------------------------------------------------------ checks

_ENUMS = (
    ("INPUT.MONTAGE.SAMPLES", SAMPLE_SOURCES),
    ("MODEL.MONTAGE.PSEUDO.FEATURES", PSEUDO_FEATURES),
)


def _range_problems(cfg_node, prefix, key, lo_bound, hi_bound):
    lo, hi = cfg_node[key]
    if not lo_bound <= lo <= hi <= hi_bound:
        return [f"{prefix}.{key} must satisfy {lo_bound} <= lo <= hi <= {hi_bound}, got {(lo, hi)}"]
    return []


def validate_montage_config(cfg) -> None:
    """Check the values of Montage's keys and of the shared keys it relies on.

    Called by ``train_net.setup`` (values only; files and datasets are checked by the trainer,
    :func:`check_montage_files`).

    Raises:
        ConfigError: listing every wrong value with its full key.
    """
    problems = enum_problems(cfg, _ENUMS)
    s, m = cfg.INPUT.MONTAGE, cfg.MODEL.MONTAGE
    size, region = s.CANVAS_SIZE, s.MIN_REGION_SIZE
    if size < 2 * FEATURE_STRIDE or size % FEATURE_STRIDE:
        problems.append(
            f"INPUT.MONTAGE.CANVAS_SIZE must be a multiple of {FEATURE_STRIDE} (the res5 stride) "
            f"and >= {2 * FEATURE_STRIDE}, got {size}"
        )
    if not FEATURE_STRIDE <= region <= size // 2:
        problems.append(
            f"INPUT.MONTAGE.MIN_REGION_SIZE must be in [{FEATURE_STRIDE}, CANVAS_SIZE / 2 = "
            f"{size // 2}] (every region must hold a res5 location), got {region}"
        )
    problems += _range_problems(s, "INPUT.MONTAGE", "CONTEXT", 0.0, 10.0)
    problems += _range_problems(s, "INPUT.MONTAGE", "BACKGROUND_SCALE", 1e-6, 1.0)
    lo, hi = s.GROUP_BOUNDS
    if not 0 < lo < 1 < hi:
        problems.append(f"INPUT.MONTAGE.GROUP_BOUNDS must satisfy 0 < lo < 1 < hi, got {(lo, hi)}")
    for key in ("BACKGROUND_PROB", "FLIP_PROB"):
        if not 0 <= s[key] <= 1:
            problems.append(f"INPUT.MONTAGE.{key} must be in [0, 1], got {s[key]}")
    for key in ("MIN_BOX_SIZE", "BACKGROUND_TRIES", "PROPOSALS_PER_IMAGE"):
        if s[key] < 1:
            problems.append(f"INPUT.MONTAGE.{key} must be >= 1, got {s[key]}")
    if s.MAX_IMAGES < 0 or (s.MAX_IMAGES > 0 and cfg.SOLVER.EPOCHS > 0):
        problems.append(
            f"INPUT.MONTAGE.MAX_IMAGES must be >= 0, and 0 when SOLVER.EPOCHS > 0 (epochs count "
            f"every image of DATASETS.TRAIN); got {s.MAX_IMAGES} with SOLVER.EPOCHS {cfg.SOLVER.EPOCHS}"
        )
    if m.NUM_CLASSES < 1:
        problems.append(f"MODEL.MONTAGE.NUM_CLASSES must be >= 1, got {m.NUM_CLASSES}")
    if not 0 <= m.TAU <= 1:
        problems.append(f"MODEL.MONTAGE.TAU (tau) must be in [0, 1], got {m.TAU}")
    if not m.ERF_SIGMA > 0:
        problems.append(f"MODEL.MONTAGE.ERF_SIGMA must be > 0 pixels, got {m.ERF_SIGMA}")
    if m.IN_FEATURE not in cfg.MODEL.RESNETS.OUT_FEATURES:
        problems.append(
            f"MODEL.MONTAGE.IN_FEATURE {m.IN_FEATURE!r} must be one of MODEL.RESNETS.OUT_FEATURES "
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)}"
        )
    p = m.PSEUDO
    if s.SAMPLES == "proposals":
        if p.FEATURES == "trunk":
            for key in ("TRUNK_CONFIG", "TRUNK_WEIGHTS"):
                if not p[key]:
                    problems.append(f"MODEL.MONTAGE.PSEUDO.{key} must name a file with FEATURES 'trunk'")
            if p.REFRESH_PERIOD != 0:
                problems.append(
                    "MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD must be 0 with FEATURES 'trunk' (a frozen "
                    f"trunk gives the same features every time), got {p.REFRESH_PERIOD}"
                )
        if p.REFRESH_PERIOD < 0:
            problems.append(f"MODEL.MONTAGE.PSEUDO.REFRESH_PERIOD must be >= 0, got {p.REFRESH_PERIOD}")
        for key in ("KMEANS_ITERS", "FIT_SAMPLES", "BATCH_SIZE"):
            if p[key] < 1:
                problems.append(f"MODEL.MONTAGE.PSEUDO.{key} must be >= 1, got {p[key]}")
    problems += common_problems(cfg)
    raise_problems(problems, "Invalid Montage config")


def check_montage_files(cfg) -> None:
    """What the trainer checks on disk before anything is built: the weights the label-free
    variant clusters with (MODEL.WEIGHTS for FEATURES "model", when it is a local path; the
    frozen trunk's files for "trunk").

    Raises:
        ConfigError: naming the key and the missing path.
    """
    p = cfg.MODEL.MONTAGE.PSEUDO
    if cfg.INPUT.MONTAGE.SAMPLES != "proposals":
        return
    if p.FEATURES == "trunk":
        files = [(f"MODEL.MONTAGE.PSEUDO.{key}", p[key]) for key in ("TRUNK_CONFIG", "TRUNK_WEIGHTS")]
    else:
        weights = cfg.MODEL.WEIGHTS
        files = [("MODEL.WEIGHTS", weights)] if weights and "://" not in weights else []
    problems = [
        f"{key}: file does not exist: {path} (the label-free variant clusters the box features "
        "of this trunk; a SoCo trunk comes from a SoCo pretraining, e.g. `make demo`)"
        for key, path in files if not os.path.isfile(path)
    ]
    raise_problems(problems, "Montage label-free trunk not found")


def class_count_problem(cfg, dataset_name: str, num_categories: int):
    """A ConfigError when a labelled dataset's category count differs from NUM_CLASSES."""
    if num_categories != cfg.MODEL.MONTAGE.NUM_CLASSES:
        return ConfigError(
            f"MODEL.MONTAGE.NUM_CLASSES is {cfg.MODEL.MONTAGE.NUM_CLASSES} but dataset "
            f"'{dataset_name}' has {num_categories} categories; set MODEL.MONTAGE.NUM_CLASSES "
            f"{num_categories}"
        )
    return None
