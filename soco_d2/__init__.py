"""SoCo (Selective Object COntrastive learning) pretraining inside Detectron2."""
from .config import add_config
from .methods.soco import add_soco_config

from . import data  # noqa: F401  (registers datasets)

__version__ = "0.1.0"
