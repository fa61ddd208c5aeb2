"""Configuration keys every pretraining method shares, in one place.

Keys that Detectron2 already has keep their meaning and are reused (``SOLVER.*``). Each method
adds its own keys in its folder (``soco_d2/methods/<method>/config.py``) and calls
:func:`add_common_config` first. Section numbers refer to the SoCo paper as summarised in
SOCO_SPEC.md.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_common_config"]


def add_common_config(cfg):
    """Add the keys shared by all pretraining methods to a Detectron2 config (in place).

    Idempotent: every method's ``add_*_config`` calls it, so the keys are added once and values
    already set (e.g. merged from a file) are kept.

    Returns:
        ``cfg``.
    """
    if "EPOCHS" in cfg.SOLVER:  # added already
        return cfg
    _C = cfg

    # ---------------------------------------------------------------- solver (Sec. 6)
    # "LARS" (Sec. 6) or "SGD" (Detectron2's default optimizer).
    _C.SOLVER.OPTIMIZER = "LARS"
    # LARS trust coefficient and eps (Sec. 6).
    _C.SOLVER.LARS_TRUST_COEF = 0.001
    _C.SOLVER.LARS_EPS = 1e-8
    # Batch size that BASE_LR refers to: lr = BASE_LR * IMS_PER_BATCH / BASE_LR_BATCH
    # (Sec. 6: 1.0 per 256). 0 uses BASE_LR as it is.
    _C.SOLVER.BASE_LR_BATCH = 256
    # lr of the biases and norm parameters (the group LARS leaves unadapted and undecayed) as a
    # multiple of the lr. 1.0 as published; short small-batch runs need less: at lr 2.0 a third
    # of the stem's BatchNorm betas went below -0.5 in 160 steps (dead channels).
    _C.SOLVER.BIAS_NORM_LR_FACTOR = 1.0
    # When > 0, MAX_ITER and WARMUP_ITERS are derived from epochs of DATASETS.TRAIN.
    _C.SOLVER.EPOCHS = 0
    # Warmup in epochs (with EPOCHS > 0); -1 keeps SOLVER.WARMUP_ITERS as it is (e.g. AlignDet's
    # 500 warmup iterations).
    _C.SOLVER.WARMUP_EPOCHS = 0
    # With EPOCHS > 0: the epochs at which the multi-step LR schedule decays (SOLVER.STEPS is
    # derived from them, e.g. (8, 11) for 12 epochs); empty keeps SOLVER.STEPS.
    _C.SOLVER.STEP_EPOCHS = ()
    # Mixed precision dtype on GPU when SOLVER.AMP.ENABLED: "float16" or "bfloat16". On a CPU,
    # SOLVER.AMP.ENABLED means bf16 autocast where the CPU has native bf16 (AMX / AVX512-BF16)
    # and fp32 elsewhere (soco_d2/engine/precision.py), whatever this key says.
    _C.SOLVER.AMP.PRECISION = "float16"

    # ---------------------------------------------------------------- datasets
    # Extra pretraining datasets registered at start, each (name, image_root, proposal_file)
    # for an image folder (searched recursively), or (name, image_root, proposal_file,
    # coco_json) for the images of a COCO json (labels ignored). An empty proposal_file means
    # whole-image proposals.
    _C.DATASETS.SOCO_REGISTER = []

    # ---------------------------------------------------------------- learning monitors
    # The probe (soco_d2/evaluation/probe.py): kNN / linear accuracy of the trunk's features of
    # the ground-truth boxes of this labelled detection set (a registered name, COCO format),
    # before training, every PERIOD iterations and at the end. "" disables it.
    _C.TEST.PROBE = CN()
    _C.TEST.PROBE.DATASET = ""
    # Iterations between probes; 0: only before the first and after the last iteration.
    _C.TEST.PROBE.PERIOD = 0
    # Test-time resize of the probe images (short side, long side cap); 0: as stored.
    _C.TEST.PROBE.MIN_SIZE = 0
    _C.TEST.PROBE.MAX_SIZE = 0
    # Probe the first MAX_IMAGES images that have boxes; 0: all of them.
    _C.TEST.PROBE.MAX_IMAGES = 0
    # Also probe with the trunk's stored BatchNorm statistics (probe_stored_bn/*), besides the
    # statistics re-estimated on the probe images (probe/*).
    _C.TEST.PROBE.STORED_BN = False
    return cfg
