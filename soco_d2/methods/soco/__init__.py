"""SoCo: Selective Object COntrastive learning (Wei et al., NeurIPS 2021).

Read top to bottom: ``config.py`` (its keys and their checks).
"""
from .. import PretrainMethod, register_method
from .config import add_soco_config, validate_soco_config

register_method(PretrainMethod(
    name="SoCo",
    add_config=add_soco_config,
    validate_config=validate_soco_config,
))
