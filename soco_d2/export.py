"""Hand-off to detection: a SoCo checkpoint -> a Detectron2 weights file of the online trunk.

SoCo's module names are Detectron2's (see :mod:`soco_d2.methods.soco.meta_arch`), so the online
trunk loads by name into a stock GeneralizedRCNN and no key is renamed:

- kept: ``backbone.*`` (ResNet + FPN) and ``roi_heads.box_head.*`` (FPN, 4conv1fc) or
  ``roi_heads.res5.*`` (C4), i.e. :data:`ONLINE_TRUNK_PREFIXES`;
- dropped: ``projector.*``, ``predictor.*`` and the momentum target ``target.*``.

The output is ``{"model": {name: tensor}, "__author__": "soco_d2", "matching_heuristics":
False}`` written with ``torch.save`` to a ``.pth`` file, which ``DetectionCheckpointer`` (and so
``MODEL.WEIGHTS``) reads with ``torch.load``. Values stay tensors rather than numpy arrays:
``torch.load`` loads weights-only by default (torch >= 2.6), which accepts tensors, strings and
bools but not numpy arrays, and tensors keep their dtypes (``num_batches_tracked`` is int64).
``matching_heuristics: False`` makes the checkpointer load names exactly as they are.
"""
import logging
import os
from collections import OrderedDict
from typing import Dict, Mapping, Tuple, Union

import torch

from .utils.atomic_io import atomic_write
from .methods.soco.meta_arch import ONLINE_TRUNK_PREFIXES

__all__ = ["AUTHOR", "SOCO_ONLY_PREFIXES", "export_trunk", "load_soco_state_dict", "split_trunk"]

logger = logging.getLogger(__name__)

AUTHOR = "soco_d2"

# Pretraining-only parts of a SoCo model: they exist in no detector.
SOCO_ONLY_PREFIXES = ("projector.", "predictor.", "target.")


def load_soco_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model state_dict of a checkpoint file (``{"model": ...}`` or a bare state_dict).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no state_dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SoCo checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"{path} holds no model state_dict: expected a checkpoint of train_net.py "
            "({'model': state_dict, ...}) or a state_dict of tensors"
        )
    return state


def _group(key: str) -> str:
    """Name of the part a dropped key belongs to: 'projector', 'target.backbone', ..."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "target" else parts[0]


def split_trunk(
    state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>"
) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, int]]:
    """Online trunk of a SoCo state_dict, and the counts of the keys left out per part.

    A ``module.`` prefix on every key (a state_dict taken from a DDP wrapper) is removed.

    Returns:
        (trunk, dropped): trunk maps kept names (unchanged) to tensors; dropped maps a part
        name ("projector", "predictor", "target.backbone", ...) to its number of keys.

    Raises:
        ValueError: not a SoCo state_dict (no projector/predictor/target keys), or no online
            trunk keys; the message names ``source`` and the expected prefixes.
    """
    keys = list(state_dict.keys())
    if keys and all(k.startswith("module.") for k in keys):
        state_dict = OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
        keys = list(state_dict.keys())
    groups = sorted({k.split(".")[0] for k in keys})
    if not any(k.startswith(SOCO_ONLY_PREFIXES) for k in keys):
        raise ValueError(
            f"{source} is not a SoCo checkpoint: it has no {', '.join(p + '*' for p in SOCO_ONLY_PREFIXES)} "
            f"keys (its top-level parts: {groups or 'none'}). Expected the model_final.pth (or "
            "model_XXXXXXX.pth) of a SoCo pretraining run (MODEL.META_ARCHITECTURE 'SoCo')."
        )
    trunk = OrderedDict((k, v) for k, v in state_dict.items() if k.startswith(ONLINE_TRUNK_PREFIXES))
    if not trunk:
        raise ValueError(
            f"{source} has no online trunk: expected keys starting with "
            f"{', '.join(ONLINE_TRUNK_PREFIXES)} (its top-level parts: {groups})."
        )
    dropped: Dict[str, int] = {}
    for k in keys:
        if k not in trunk:
            dropped[_group(k)] = dropped.get(_group(k), 0) + 1
    return trunk, dropped


def export_trunk(
    src: Union[str, Mapping[str, torch.Tensor]], dst: str, *, verbose: bool = True
) -> dict:
    """Write the online trunk of a SoCo model as Detectron2 weights (see the module docstring).

    Args:
        src: path of a SoCo training checkpoint (``model_final.pth``), or a checkpoint dict
            (``{"model": state_dict, ...}``), or a state_dict.
        dst: output ``.pth`` file, for ``MODEL.WEIGHTS``; written atomically.
        verbose: log every ``old -> new`` key at INFO (else at DEBUG).

    Returns:
        dict with ``source``, ``output``, ``kept`` (number of keys), ``kept_keys``,
        ``dropped`` ({part: number of keys}), ``renamed`` (0: names are kept) and
        ``num_parameters`` (elements in the kept tensors).

    Raises:
        FileNotFoundError: ``src`` is a path that does not exist.
        ValueError: ``src`` is not a SoCo checkpoint, or ``dst`` is ``src`` or ends in
            ``.pkl`` (DetectionCheckpointer reads those with pickle, not torch.load).
    """
    if str(dst).endswith(".pkl"):
        raise ValueError(
            f"Output {dst}: use a .pth name; DetectionCheckpointer reads .pkl files with pickle "
            "(Detectron1/Caffe2 format), not torch.load"
        )
    if isinstance(src, (str, os.PathLike)):
        source = os.fspath(src)
        if os.path.exists(dst) and os.path.exists(source) and os.path.samefile(source, dst):
            raise ValueError(f"Output {dst} is the input checkpoint; choose another file name")
        state = load_soco_state_dict(source)
    else:
        source = "<in-memory state_dict>"
        state = src.get("model", src) if isinstance(src.get("model", None), Mapping) else src

    trunk, dropped = split_trunk(state, source)
    log_key = logger.info if verbose else logger.debug
    logger.info(
        f"Exporting the SoCo online trunk of {source}: {len(trunk)} keys. Names are already "
        "Detectron2's (GeneralizedRCNN), so every key keeps its name:"
    )
    for k in trunk:
        log_key(f"  {k} -> {k}")
    for part, n in sorted(dropped.items()):
        logger.info(f"Dropped {part}.*: {n} keys")

    weights = OrderedDict((k, v.detach().cpu()) for k, v in trunk.items())
    trunk = {"model": weights, "__author__": AUTHOR, "matching_heuristics": False}
    atomic_write(dst, lambda f: torch.save(trunk, f))
    summary = {
        "source": source,
        "output": os.fspath(dst),
        "kept": len(weights),
        "kept_keys": list(weights),
        "dropped": dict(sorted(dropped.items())),
        "renamed": 0,
        "num_parameters": int(sum(v.numel() for v in weights.values())),
    }
    logger.info(
        f"Wrote {dst}: {summary['kept']} keys ({summary['num_parameters'] / 1e6:.2f}M values), "
        f"dropped {sum(dropped.values())} keys; load it with MODEL.WEIGHTS {dst}"
    )
    return summary
