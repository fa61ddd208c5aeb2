"""Hand-off to detection: a pretraining checkpoint -> Detectron2 weights of the trunk it trained.

One exporter for every method. Each method declares, in its folder, what it hands over (an
:class:`ExportSpec`, e.g. ``soco_d2/methods/soco/export.py``): the state_dict prefixes of the
trunk that is kept, the prefixes of its pretraining-only parts (they mark a checkpoint as that
method's and are dropped, as is everything else outside the trunk), and renames for names that
differ from Detectron2's. :func:`export_trunk` applies a declaration, or finds it from the
checkpoint's keys among the declarations it is given; the export hook
(``soco_d2.engine.hooks.ExportTrunkHook``, given the declaration of the method that trains) and
``tools/convert_to_d2.py`` (given every registered method's, ``soco_d2.methods.registered_exports``)
both call it. This module knows no method: it is given their declarations.

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
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple, Union

import torch

from .utils.atomic_io import atomic_write

__all__ = ["AUTHOR", "ExportSpec", "find_export_spec", "export_trunk", "read_state_dict", "split_trunk"]

logger = logging.getLogger(__name__)

AUTHOR = "soco_d2"


@dataclass(frozen=True)
class ExportSpec:
    """What a pretraining method hands to a detector.

    Attributes:
        method: the method's name (its MODEL.META_ARCHITECTURE).
        keep: state_dict prefixes of the trunk, exported (e.g. ``"backbone."``).
        marks: prefixes of parts only this method's checkpoints have (pretraining-only,
            dropped); a checkpoint with a key starting with one of them is this method's.
        renames: ``(old prefix, new prefix)`` pairs applied to kept keys, first match wins;
            empty when the names are already Detectron2's.
        aliases: ``(prefix, alias prefix)`` pairs: an exported key starting with ``prefix`` is
            also written under the alias (the same tensor, stored once), for trunks that
            different detectors name differently (e.g. a ResNet is ``backbone.*`` in a C4
            detector and ``backbone.bottom_up.*`` in an FPN one). Empty: one name per key.
    """

    method: str
    keep: Tuple[str, ...]
    marks: Tuple[str, ...]
    renames: Tuple[Tuple[str, str], ...] = ()
    aliases: Tuple[Tuple[str, str], ...] = ()

    def rename(self, key: str) -> str:
        for old, new in self.renames:
            if key.startswith(old):
                return new + key[len(old):]
        return key


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model state_dict of a checkpoint file (``{"model": ...}`` or a bare state_dict).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no state_dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pretraining checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"{path} holds no model state_dict: expected a checkpoint of train_net.py "
            "({'model': state_dict, ...}) or a state_dict of tensors"
        )
    return state


def _strip_ddp(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """Without the ``module.`` prefix that every key has in a state_dict taken from DDP."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
    return state_dict


def _parts(keys) -> list:
    return sorted({k.split(".")[0] for k in keys})


def find_export_spec(
    keys: Sequence[str], specs: Sequence[ExportSpec], source: str = "<state_dict>"
) -> ExportSpec:
    """The declaration among ``specs`` whose ``marks`` the keys carry (e.g. every registered
    method's, ``soco_d2.methods.registered_exports()``).

    A mark may be shared by several methods (every method with a momentum target has
    ``target.*``), so the keys belong to the declaration with the largest share of its marks
    present; on a tie, the first one in ``specs`` (registration order).

    Raises:
        ValueError: no declaration matches; the message names ``source``, each method and the
            prefixes that would mark it.
    """
    best, best_share = None, 0.0
    for spec in specs:
        share = sum(any(k.startswith(mark) for k in keys) for mark in spec.marks) / max(len(spec.marks), 1)
        if share > best_share:
            best, best_share = spec, share
    if best is not None:
        return best
    names = " or ".join(s.method for s in specs)
    # "is not a SoCo checkpoint (no ...), nor an AlignDetRCNN checkpoint (no ...)"
    marks = ", nor ".join(
        f"{'an' if i and s.method[0] in 'AEIOU' else 'a'} {s.method} checkpoint "
        f"(no {', '.join(p + '*' for p in s.marks)} keys)" for i, s in enumerate(specs)
    )
    archs = " or ".join(repr(s.method) for s in specs)
    raise ValueError(
        f"{source} is not {marks}; its top-level parts: {_parts(keys) or 'none'}. Expected the "
        f"model_final.pth (or model_XXXXXXX.pth) of a {names} pretraining run "
        f"(MODEL.META_ARCHITECTURE {archs})."
    )


def _group(key: str) -> str:
    """Name of the part a dropped key belongs to: 'projector', 'target.backbone', ... (the
    momentum target, soco_d2.modeling.MomentumTarget, is counted per part)."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "target" else parts[0]


def split_trunk(
    state_dict: Mapping[str, torch.Tensor], spec: ExportSpec, source: str = "<state_dict>"
) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, int], Dict[str, str]]:
    """The trunk of a pretraining state_dict by ``spec``, and what was left out.

    A ``module.`` prefix on every key (a state_dict taken from a DDP wrapper) is removed.

    Returns:
        (trunk, dropped, names): trunk maps the exported (renamed) names, and their aliases
        (``spec.aliases``), to tensors; dropped maps a part name ("projector", "predictor",
        "target.backbone", ...) to its number of keys; names maps each kept key to its
        exported name.

    Raises:
        ValueError: the state_dict has none of ``spec.marks`` or no trunk key; the message
            names ``source`` and the expected prefixes.
    """
    state_dict = _strip_ddp(state_dict)
    keys = list(state_dict.keys())
    find_export_spec(keys, [spec], source)  # raises if it is not this method's
    names = OrderedDict((k, spec.rename(k)) for k in keys if k.startswith(spec.keep))
    if not names:
        raise ValueError(
            f"{source} has no online trunk: expected keys starting with "
            f"{', '.join(spec.keep)} (its top-level parts: {_parts(keys)})."
        )
    trunk = OrderedDict((new, state_dict[old]) for old, new in names.items())
    for prefix, alias in spec.aliases:
        for key in [k for k in trunk if k.startswith(prefix)]:
            trunk.setdefault(alias + key[len(prefix):], trunk[key])
    dropped: Dict[str, int] = {}
    for k in keys:
        if k not in names:
            dropped[_group(k)] = dropped.get(_group(k), 0) + 1
    return trunk, dropped, dict(names)


def export_trunk(
    src: Union[str, Mapping[str, torch.Tensor]],
    dst: str,
    spec: Union[ExportSpec, Sequence[ExportSpec]],
    *,
    verbose: bool = True,
) -> dict:
    """Write the trunk of a pretraining model as Detectron2 weights (see the module docstring).

    Args:
        src: path of a pretraining checkpoint (``model_final.pth``), or a checkpoint dict
            (``{"model": state_dict, ...}``), or a state_dict.
        dst: output ``.pth`` file, for ``MODEL.WEIGHTS``; written atomically.
        spec: the method's declaration, or the declarations the checkpoint may be one of (it
            is found from the keys, :func:`find_export_spec`).
        verbose: log every ``old -> new`` key at INFO (else at DEBUG).

    Returns:
        dict with ``source``, ``output``, ``method``, ``kept`` (number of keys),
        ``kept_keys``, ``dropped`` ({part: number of keys}), ``renamed`` (number of keys whose
        name changed), ``names`` ({old: new} for every exported key), ``aliased`` (extra names
        written, see ``ExportSpec.aliases``; counted in ``kept`` and ``kept_keys``) and
        ``num_parameters`` (elements in the kept tensors, each tensor once).

    Raises:
        FileNotFoundError: ``src`` is a path that does not exist.
        ValueError: ``src`` is not a checkpoint of the method (of any of the methods when
            ``spec`` is several declarations), or ``dst`` is ``src`` or ends in ``.pkl`` (DetectionCheckpointer
            reads those with pickle, not torch.load).
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
        state = read_state_dict(source)
    else:
        source = "<in-memory state_dict>"
        state = src.get("model", src) if isinstance(src.get("model", None), Mapping) else src
    if not isinstance(spec, ExportSpec):
        spec = find_export_spec(list(_strip_ddp(state)), spec, source)

    trunk, dropped, names = split_trunk(state, spec, source)
    renamed = sum(old != new for old, new in names.items())
    log_key = logger.info if verbose else logger.debug
    how = (
        f"{renamed} keys are renamed to Detectron2's names" if renamed else
        "Names are already Detectron2's (GeneralizedRCNN), so every key keeps its name"
    )
    logger.info(f"Exporting the {spec.method} online trunk of {source}: {len(trunk)} keys. {how}:")
    for old, new in names.items():
        log_key(f"  {old} -> {new}")
    aliased = len(trunk) - len(names)
    for prefix, alias in spec.aliases:
        logger.info(f"Also written under a second name (same tensors): {prefix}* as {alias}*")
    for part, n in sorted(dropped.items()):
        logger.info(f"Dropped {part}.*: {n} keys")

    weights = OrderedDict((k, v.detach().cpu()) for k, v in trunk.items())
    trunk = {"model": weights, "__author__": AUTHOR, "matching_heuristics": False}
    atomic_write(dst, lambda f: torch.save(trunk, f))
    summary = {
        "source": source,
        "output": os.fspath(dst),
        "method": spec.method,
        "kept": len(weights),
        "kept_keys": list(weights),
        "dropped": dict(sorted(dropped.items())),
        "renamed": renamed,
        "names": dict(names),
        "aliased": aliased,
        "num_parameters": int(sum(weights[new].numel() for new in names.values())),
    }
    logger.info(
        f"Wrote {dst}: {summary['kept']} keys ({summary['num_parameters'] / 1e6:.2f}M values), "
        f"dropped {sum(dropped.values())} keys; load it with MODEL.WEIGHTS {dst}"
    )
    return summary
