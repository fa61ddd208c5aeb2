"""Checks that make a wrong SoCo config fail at start, with the key or path in the message.

Two stages:

- :func:`validate_soco_config` checks values only (called by ``train_net.setup`` for SoCo
  configs, so every config also loads on a machine without the data).
- :func:`check_soco_datasets` checks what the training set needs on disk: DATASETS.TRAIN
  names registered, image folders, COCO jsons and proposal files present (called by
  SoCoTrainer before the model is built).

Unknown keys already fail in yacs (``KeyError: Non-existent config key``), and a transfer
config whose MODEL.WEIGHTS is still the placeholder fails in ``config_loading.check_weights_set``.
"""
import os
from typing import List

__all__ = ["ConfigError", "MIN_VIEW_SIZE", "validate_soco_config", "check_soco_datasets"]

#: Smallest allowed view side. Rule: a view must hold one full cell of the coarsest feature map
#: that pools boxes (P5 / res5, stride 32), which is also the smallest box side SoCo's proposal
#: filter keeps (32 px); a smaller view cannot show such a box at its native size.
MIN_VIEW_SIZE = 32

_ENUMS = (
    ("INPUT.SOCO.VIEW3_MODE", ("crop", "downsample")),
    ("MODEL.SOCO.LEVEL_ASSIGNMENT", ("scale_aware", "canonical", "all")),
    ("MODEL.SOCO.HEAD_NORM", ("BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "")),
    ("SOLVER.AMP.PRECISION", ("float16", "bfloat16")),
)


class ConfigError(ValueError):
    """One or more config values or paths are wrong; the message lists each with its key."""


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _fail(problems: List[str], what: str) -> None:
    if problems:
        raise ConfigError(f"{what}:\n  - " + "\n  - ".join(problems))


def validate_soco_config(cfg) -> None:
    """Check the values of SoCo's keys (and the Detectron2 keys it relies on).

    Raises:
        ConfigError: listing every wrong value with its full key.
    """
    problems = []
    s = cfg.INPUT.SOCO
    if s.NUM_PROPOSALS < 1:
        problems.append(f"INPUT.SOCO.NUM_PROPOSALS (K) must be >= 1, got {s.NUM_PROPOSALS}")
    for key in ("VIEW1_SIZE", "VIEW2_SIZE", "VIEW3_SIZE", "VIEW4_SIZE"):
        size = s[key]
        if key == "VIEW4_SIZE" and size == 0:
            continue  # no fourth view
        if size < MIN_VIEW_SIZE:
            off = ", or 0 for no V4" if key == "VIEW4_SIZE" else ""
            problems.append(
                f"INPUT.SOCO.{key} must be >= {MIN_VIEW_SIZE} (the stride of P5/res5 and the "
                f"smallest box side the proposal filter keeps){off}; got {size}"
            )
    for key, allowed in _ENUMS:
        value = _get(cfg, key)
        if value not in allowed:
            problems.append(f"{key} must be one of {list(allowed)}, got {value!r}")
    if str(cfg.SOLVER.OPTIMIZER).upper() not in ("LARS", "SGD"):
        problems.append(f"SOLVER.OPTIMIZER must be 'LARS' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")

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
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        problems.append(f"SOLVER.IMS_PER_BATCH must be >= 1, got {cfg.SOLVER.IMS_PER_BATCH}")
    if not cfg.DATASETS.TRAIN:
        problems.append("DATASETS.TRAIN is empty: name at least one pretraining dataset")
    _fail(problems, "Invalid SoCo config")


def check_soco_datasets(cfg) -> None:
    """Check that the training data exists before anything is built.

    Every DATASETS.TRAIN name must be registered (SOCO_REGISTER entries are registered by
    ``train_net.setup``); for SoCo's own registrations the image folder, the COCO json and the
    proposal file must exist; with MODEL.LOAD_PROPOSALS, every DATASETS.PROPOSAL_FILES_TRAIN
    file must exist.

    Raises:
        ConfigError: naming each missing dataset (with some registered names) or path (with
            the dataset and key it comes from).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    problems = []
    registered = DatasetCatalog.list()
    for name in cfg.DATASETS.TRAIN:
        if name not in registered:
            soco = sorted(n for n in registered if "soco" in n)
            examples = (soco + [n for n in sorted(registered) if n not in soco])[:8]
            problems.append(
                f"DATASETS.TRAIN: dataset '{name}' is not registered. Registered names include "
                f"{examples}; register your own with DATASETS.SOCO_REGISTER "
                f"[('{name}', '/path/to/images', '/path/to/proposals.pkl')]"
            )
            continue
        src = MetadataCatalog.get(name).get("soco_source", None)
        if src is None:
            continue  # registered by someone else: its loader reports its own errors
        if not os.path.isdir(src["image_root"]):
            problems.append(f"dataset '{name}': image folder does not exist: {src['image_root']}")
        if src["json_file"] and not os.path.isfile(src["json_file"]):
            problems.append(f"dataset '{name}': COCO json does not exist: {src['json_file']}")
        if src["proposal_file"] and not os.path.isfile(src["proposal_file"]):
            problems.append(
                f"dataset '{name}': proposal file does not exist: {src['proposal_file']} "
                "(generate it with tools/generate_proposals.py)"
            )
    if cfg.MODEL.LOAD_PROPOSALS:
        files = list(cfg.DATASETS.PROPOSAL_FILES_TRAIN)
        if len(files) != len(cfg.DATASETS.TRAIN):
            problems.append(
                f"DATASETS.PROPOSAL_FILES_TRAIN has {len(files)} files for "
                f"{len(cfg.DATASETS.TRAIN)} DATASETS.TRAIN names"
            )
        for path in files:
            if not os.path.isfile(path):
                problems.append(f"DATASETS.PROPOSAL_FILES_TRAIN: file does not exist: {path}")
    _fail(problems, "Training data not found")
