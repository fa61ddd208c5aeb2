"""Loading YAML configs whose ``_BASE_`` is one of Detectron2's own model-zoo configs.

The transfer configs (``configs/transfer/``) change only what SoCo weights imply, on top of the
configs shipped inside the installed Detectron2 package, without copying those into this repo::

    _BASE_:
      - "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
      - "Base-SoCo-Transfer-FPN.yaml"

A base named ``detectron2://REL`` is ``detectron2.model_zoo.get_config_file(REL)``; any other
base keeps Detectron2's meaning (a path relative to the YAML that names it), so the nested
relative ``_BASE_`` inside Detectron2's files (``../Base-RCNN-FPN.yaml``) resolves inside the
package. When ``_BASE_`` is a list, later entries override earlier ones and the file's own keys
override them all.

Use :func:`load_config` where a project would call ``cfg.merge_from_file(path)``, and
:func:`check_weights_set` before building a detector from a transfer config.
"""
import logging
import os
import re
import warnings

from detectron2.config import CfgNode

__all__ = [
    "MODEL_ZOO_PREFIX",
    "WEIGHTS_PLACEHOLDER",
    "ModelZooCfgNode",
    "resolve_config_path",
    "load_config",
    "check_weights_set",
]

logger = logging.getLogger(__name__)

#: Prefix of a config path inside the installed Detectron2's model zoo.
MODEL_ZOO_PREFIX = "detectron2://"

#: MODEL.WEIGHTS of the transfer configs until the user points it at exported SoCo weights.
WEIGHTS_PLACEHOLDER = "PLEASE_SET_SOCO_WEIGHTS"

# "detectron2://REL", also inside a joined path and with the "//" collapsed by normalisation.
_ZOO_PATH = re.compile(r"(?:^|/)detectron2:/+(.+)$")


def _model_zoo_config_file(rel_path: str) -> str:
    """Absolute path of ``rel_path`` inside Detectron2's model-zoo ``configs/`` folder."""
    try:
        with warnings.catch_warnings():  # model_zoo imports pkg_resources, which warns
            warnings.simplefilter("ignore")
            from detectron2.model_zoo import get_config_file
    except ImportError:  # pkg_resources gone (setuptools >= 81): same folder, found directly
        import importlib.util

        spec = importlib.util.find_spec("detectron2.model_zoo")
        path = os.path.join(list(spec.submodule_search_locations)[0], "configs", rel_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{MODEL_ZOO_PREFIX}{rel_path}: no such model-zoo config ({path})")
        return path
    try:
        return get_config_file(rel_path)
    except RuntimeError as e:  # Detectron2 says "... not available in Model Zoo!"
        raise FileNotFoundError(f"{MODEL_ZOO_PREFIX}{rel_path}: {e}") from None


def resolve_config_path(path: str) -> str:
    """``detectron2://REL`` -> the model-zoo file; anything else is returned unchanged.

    Also accepts the form Detectron2's loader produces when it joins a relative ``_BASE_`` to
    the folder of the including file (``/some/dir/detectron2://REL``).
    """
    match = _ZOO_PATH.search(path)
    return _model_zoo_config_file(match.group(1)) if match else path


class ModelZooCfgNode(CfgNode):
    """Detectron2's CfgNode whose ``_BASE_`` entries may be ``detectron2://`` model-zoo paths.

    Only YAML loading differs: :meth:`load_yaml_with_base` resolves the prefix before reading,
    and since Detectron2's loader recurses through ``cls.load_yaml_with_base``, every level of
    nesting goes through the same resolution.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False):
        return super().load_yaml_with_base(resolve_config_path(filename), allow_unsafe=allow_unsafe)


def load_config(cfg: CfgNode, path: str) -> CfgNode:
    """Merge the YAML ``path`` (and its ``_BASE_`` chain, model-zoo bases included) into ``cfg``.

    The drop-in replacement for ``cfg.merge_from_file(path)``: same key checks (an unknown key
    raises ``KeyError``), same handling of older config VERSIONs. ``path`` may itself be a
    ``detectron2://`` path.

    Args:
        cfg: a Detectron2 config (with SoCo's keys added if the file uses them); modified.
        path: YAML file.

    Returns:
        ``cfg``.

    Raises:
        FileNotFoundError: ``path`` or one of its bases does not exist (names it).
    """
    real = resolve_config_path(path)
    if not os.path.isfile(real):
        raise FileNotFoundError(f"Config file does not exist: {path}")
    loaded = type(cfg)(ModelZooCfgNode.load_yaml_with_base(real, allow_unsafe=True))

    latest = cfg.VERSION
    version = loaded.get("VERSION", None)
    if version is None:
        from detectron2.config.compat import guess_version

        version = guess_version(loaded, path)
    if version > latest:
        raise ValueError(f"{path} is a config of VERSION {version}; this Detectron2 knows up to {latest}")
    if version == latest:
        cfg.merge_from_other_cfg(loaded)
        return cfg

    # An old-format file: Detectron2's own upgrade path, as in CfgNode.merge_from_file.
    from detectron2.config.compat import downgrade_config, upgrade_config

    logger.warning(f"Upgrading config {path} from VERSION {version} to {latest}")
    old = downgrade_config(cfg, to_version=version)
    old.merge_from_other_cfg(loaded)
    new = upgrade_config(old)
    cfg.clear()
    cfg.update(new)
    return cfg


def check_weights_set(cfg: CfgNode, config_file: str = "") -> None:
    """Refuse to fine-tune from the transfer configs' MODEL.WEIGHTS placeholder.

    ``""`` (random init) and any real path or URL pass; only :data:`WEIGHTS_PLACEHOLDER` fails.

    Raises:
        ValueError: MODEL.WEIGHTS is the placeholder; the message names MODEL.WEIGHTS, the
            config file and how to set it.
    """
    if cfg.MODEL.WEIGHTS != WEIGHTS_PLACEHOLDER:
        return
    source = f"config file {config_file}" if config_file else "the config file"
    raise ValueError(
        f"MODEL.WEIGHTS is still the placeholder '{WEIGHTS_PLACEHOLDER}' from {source}. "
        "Export the SoCo trunk (python tools/convert_to_d2.py model_final.pth "
        "soco_trunk.pth, or use OUTPUT_DIR/model_final_trunk.pth of the pretraining run) and "
        "pass `MODEL.WEIGHTS /path/to/soco_trunk.pth` on the command line "
        "(`MODEL.WEIGHTS \"\"` trains from random init)."
    )
