"""AlignDet: box-domain pretraining of FPN, RPN and detection heads on pseudo-boxes, the backbone
frozen (Li et al., ICCV 2023; ALIGNDET_SPEC.md).

Read top to bottom: ``config.py`` (its keys and their checks), ``mapper.py`` (two views and the
pseudo-boxes), ``loss.py`` (InfoNCE), ``meta_arch.py`` (the R-CNN and RetinaNet models),
``trainer.py``, ``export.py`` (what it hands to a detector). Two meta-architectures are
registered, one method each: ``AlignDetRCNN`` (Faster / Mask R-CNN FPN) and
``AlignDetRetinaNet``.
"""
from .. import PretrainMethod, register_method
from .config import META_ARCHITECTURES, add_aligndet_config, validate_aligndet_config
from .export import aligndet_export
from .mapper import AlignDetDatasetMapper
from .meta_arch import AlignDetRCNN, AlignDetRetinaNet  # noqa: F401  (registers both in META_ARCH_REGISTRY)
from .trainer import AlignDetTrainer

for _name in META_ARCHITECTURES:
    register_method(PretrainMethod(
        name=_name,
        add_config=add_aligndet_config,
        validate_config=validate_aligndet_config,
        trainer=AlignDetTrainer,
        export=aligndet_export(_name),
    ))
