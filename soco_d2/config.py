"""All configuration keys SoCo adds to Detectron2, in one place.

Keys that Detectron2 already has keep their meaning and are reused (``MODEL.FPN.*``,
``MODEL.ROI_BOX_HEAD.*``, ``MODEL.ROI_HEADS.IN_FEATURES``, ``SOLVER.*``). Section numbers refer
to the paper as summarised in SOCO_SPEC.md.
"""
from detectron2.config import CfgNode as CN


def add_soco_config(cfg):
    """Add SoCo's keys to a Detectron2 config (in place) and return it."""
    _C = cfg

    # ---------------------------------------------------------------- views (Sec. 2)
    _C.INPUT.SOCO = CN()
    # Side of V1, the whole image resized (Sec. 2).
    _C.INPUT.SOCO.VIEW1_SIZE = 224
    # Side of V2, a random resized crop (Sec. 2).
    _C.INPUT.SOCO.VIEW2_SIZE = 224
    # Side of V3 (112; 192 for SoCo*).
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
    # Fraction of a proposal's area that must fall inside a crop for it to count as overlapping.
    _C.INPUT.SOCO.MIN_OVERLAP = 0.5
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
    # Cutout inside boxes on V2/V3 (published FPN run): per-box probability and area range.
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
    # tau_base of the target momentum schedule (Sec. 6).
    _C.MODEL.SOCO.MOMENTUM = 0.99

    # ---------------------------------------------------------------- solver (Sec. 6)
    # "LARS" (Sec. 6) or "SGD" (Detectron2's default optimizer).
    _C.SOLVER.OPTIMIZER = "LARS"
    # LARS trust coefficient and eps (Sec. 6).
    _C.SOLVER.LARS_TRUST_COEF = 0.001
    _C.SOLVER.LARS_EPS = 1e-8
    # Batch size that BASE_LR refers to: lr = BASE_LR * IMS_PER_BATCH / BASE_LR_BATCH
    # (Sec. 6: 1.0 per 256). 0 uses BASE_LR as it is.
    _C.SOLVER.BASE_LR_BATCH = 256
    # When > 0, MAX_ITER and WARMUP_ITERS are derived from epochs of DATASETS.TRAIN.
    _C.SOLVER.EPOCHS = 0
    _C.SOLVER.WARMUP_EPOCHS = 0
    # Mixed precision dtype when SOLVER.AMP.ENABLED: "float16" (GPU) or "bfloat16" (GPU with
    # bf16 support, or CPU autocast: much faster on CPUs with AMX / AVX512-BF16).
    _C.SOLVER.AMP.PRECISION = "float16"

    # ---------------------------------------------------------------- datasets
    # Extra pretraining datasets registered at start, each (name, image_root, proposal_file)
    # for an image folder (searched recursively), or (name, image_root, proposal_file,
    # coco_json) for the images of a COCO json (labels ignored). An empty proposal_file means
    # whole-image proposals.
    _C.DATASETS.SOCO_REGISTER = []
    return cfg
