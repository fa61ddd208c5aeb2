"""Configuration: the keys, YAML loading and the checks every pretraining method shares.

- ``common.py``: the keys all methods share; each method adds its own in its folder
  (``soco_d2/methods/<method>/config.py``).
- ``loading.py``: YAML files whose ``_BASE_`` may be one of Detectron2's model-zoo configs.
- ``checks.py``: :class:`ConfigError` and the shared checks (values, data on disk).

The shared keys and every registered method's come from ``soco_d2.add_config`` (defined by the
methods registry, ``soco_d2/methods/__init__.py``: the shared pieces do not know the methods).
"""
from .checks import ConfigError, check_datasets
from .common import add_common_config
from .loading import WEIGHTS_PLACEHOLDER, check_weights_set, load_config

__all__ = [
    "add_common_config", "ConfigError", "check_datasets", "WEIGHTS_PLACEHOLDER",
    "check_weights_set", "load_config",
]

