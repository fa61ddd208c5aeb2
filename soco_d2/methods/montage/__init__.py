"""Montage pretraining (Zhou et al., "Cheaper Pre-training Lunch", ECCV 2020; MONTAGE_SPEC.md),
plus our label-free variant.

Read top to bottom: ``config.py`` (its keys and their checks), ``samples.py`` (positives with
context and background crops; the label-free samples), ``layout.py`` (aspect groups and the
canvas split), ``mapper.py`` (one montage), ``soft_labels.py`` (ERF-adaptive soft labels),
``loss.py``, ``meta_arch.py`` (ResNet + 1 x 1 classifier), ``pseudo_labels.py`` (label-free:
k-means pseudo-classes and their refresh), ``trainer.py``, ``export.py`` (what it hands to a
detector).
"""
from .. import PretrainMethod, register_method
from .config import add_montage_config, validate_montage_config
from .export import MONTAGE_EXPORT
from .mapper import MontageDatasetMapper
from .meta_arch import Montage  # noqa: F401  (registers "Montage" in Detectron2's META_ARCH_REGISTRY)
from .trainer import MontageTrainer

register_method(PretrainMethod(
    name="Montage",
    add_config=add_montage_config,
    validate_config=validate_montage_config,
    trainer=MontageTrainer,
    export=MONTAGE_EXPORT,
))
