"""Checks that make a wrong config fail at start, with the key or path in the message.

What every pretraining method shares:

- :class:`ConfigError`, and :func:`raise_problems` to report every problem at once;
- :func:`enum_problems` (a key must take one of a few values) and :func:`common_problems`, the
  checks of the shared keys (``soco_d2/config/common.py``). Each method checks its own values in
  its folder (e.g. ``validate_soco_config`` in ``soco_d2/methods/soco/config.py``), called by
  ``train_net.setup``, so every config also loads on a machine without the data;
- :func:`check_datasets`: what the training set needs on disk (DATASETS.TRAIN names
  registered, image folders, COCO jsons and proposal files present), called by the pretraining
  trainer before the model is built.

Unknown keys already fail in yacs (``KeyError: Non-existent config key``), and a transfer
config whose MODEL.WEIGHTS is still the placeholder fails in ``loading.check_weights_set``.
"""
import os
from typing import List, Sequence, Tuple

__all__ = ["ConfigError", "raise_problems", "enum_problems", "common_problems", "check_datasets"]

_COMMON_ENUMS = (("SOLVER.AMP.PRECISION", ("float16", "bfloat16")),)


class ConfigError(ValueError):
    """One or more config values or paths are wrong; the message lists each with its key."""


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def raise_problems(problems: List[str], what: str) -> None:
    """Raise one :class:`ConfigError` listing every problem under ``what``; nothing if none."""
    if problems:
        raise ConfigError(f"{what}:\n  - " + "\n  - ".join(problems))


def enum_problems(cfg, enums: Sequence[Tuple[str, Sequence]]) -> List[str]:
    """A problem for every ``(full key, allowed values)`` whose value is not allowed."""
    problems = []
    for key, allowed in enums:
        value = _get(cfg, key)
        if value not in allowed:
            problems.append(f"{key} must be one of {list(allowed)}, got {value!r}")
    return problems


def common_problems(cfg) -> List[str]:
    """The problems of the keys every pretraining method uses (solver, AMP, DATASETS.TRAIN)."""
    problems = enum_problems(cfg, _COMMON_ENUMS)
    if str(cfg.SOLVER.OPTIMIZER).upper() not in ("LARS", "SGD"):
        problems.append(f"SOLVER.OPTIMIZER must be 'LARS' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        problems.append(f"SOLVER.IMS_PER_BATCH must be >= 1, got {cfg.SOLVER.IMS_PER_BATCH}")
    if cfg.SOLVER.CHECKPOINT_PERIOD < 1:  # fvcore's PeriodicCheckpointer divides by it
        problems.append(f"SOLVER.CHECKPOINT_PERIOD must be >= 1, got {cfg.SOLVER.CHECKPOINT_PERIOD}")
    if not cfg.DATASETS.TRAIN:
        problems.append("DATASETS.TRAIN is empty: name at least one pretraining dataset")
    steps = list(cfg.SOLVER.STEP_EPOCHS)
    if steps and (steps[0] <= 0 or any(b <= a for a, b in zip(steps, steps[1:]))
                  or steps[-1] >= cfg.SOLVER.EPOCHS):
        problems.append(
            f"SOLVER.STEP_EPOCHS must be positive, strictly increasing and below SOLVER.EPOCHS "
            f"({cfg.SOLVER.EPOCHS}), got {tuple(steps)}"
        )
    return problems


def check_datasets(cfg) -> None:
    """Check that the training data exists before anything is built.

    Every DATASETS.TRAIN name must be registered (SOCO_REGISTER entries are registered by
    ``train_net.setup``); for pretraining sets registered by this package the image folder, the
    COCO json and the proposal file must exist; with MODEL.LOAD_PROPOSALS, every
    DATASETS.PROPOSAL_FILES_TRAIN file must exist.

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
    raise_problems(problems, "Training data not found")
