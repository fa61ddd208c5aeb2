"""Configuration: the keys, YAML loading and the checks every pretraining method shares.

- ``common.py``: the keys all methods share; each method adds its own in its folder
  (``soco_d2/methods/<method>/config.py``).
- ``loading.py``: YAML files whose ``_BASE_`` may be one of Detectron2's model-zoo configs.
- ``checks.py``: :class:`ConfigError` and the shared checks (values, data on disk).

:func:`add_config` is what ``train_net.py`` calls: the shared keys and every registered method's.
"""
from ..methods import registered_methods
from .checks import ConfigError, check_datasets
from .common import add_common_config
from .loading import WEIGHTS_PLACEHOLDER, check_weights_set, load_config

__all__ = [
    "add_config", "add_common_config", "ConfigError", "check_datasets", "WEIGHTS_PLACEHOLDER",
    "check_weights_set", "load_config",
]


def add_config(cfg):
    """Add the shared keys and the keys of every registered pretraining method (in place).

    Returns:
        ``cfg``.
    """
    add_common_config(cfg)
    for method in registered_methods():
        method.add_config(cfg)
    return cfg
