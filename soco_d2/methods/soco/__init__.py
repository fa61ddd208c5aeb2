"""SoCo: Selective Object COntrastive learning (Wei et al., NeurIPS 2021).

Read top to bottom: ``config.py`` (its keys and their checks), ``views.py`` and ``mapper.py``
(the views and matched proposals), ``box_branch.py``, ``fpn_levels.py``, ``loss.py`` and
``meta_arch.py`` (the model), ``trainer.py``, ``export.py`` (what it hands to a detector).
"""
from .. import PretrainMethod, register_method
from .config import add_soco_config, validate_soco_config
from .export import SOCO_EXPORT
from .mapper import SoCoDatasetMapper
from .meta_arch import SoCo  # noqa: F401  (registers "SoCo" in Detectron2's META_ARCH_REGISTRY)
from .trainer import SoCoTrainer

register_method(PretrainMethod(
    name="SoCo",
    add_config=add_soco_config,
    validate_config=validate_soco_config,
    trainer=SoCoTrainer,
    export=SOCO_EXPORT,
))
