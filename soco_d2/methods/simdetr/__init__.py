"""SimDETR-style pretraining (Metaxas et al., arXiv 2307.15697): the whole detector, backbone
included, trained without labels by its own detection loss, on pseudo-boxes with k-means
pseudo-classes, then on its own confident detections, round after round.

Read top to bottom: ``config.py`` (its keys and their checks), ``pseudo_labels.py`` (round 0:
proposals, their features, k-means, the COCO json), ``self_training.py`` (rounds >= 1: the
detector's detections, the change between rounds, the hook), ``mapper.py`` (Detectron2's
DatasetMapper), ``meta_arch.py`` (GeneralizedRCNN under its own name), ``trainer.py``,
``export.py`` (what it hands to a detector). The semantic proposals it starts from are a shared
piece, ``soco_d2/data/proposals/semantic.py`` (``tools/generate_proposals.py --from-features``).
``pseudo_labels.py`` and ``self_training.py`` know no detector: a DETR meta-architecture with
``feature_extractor()`` and Detectron2's inference interface reuses them.
"""
from .. import PretrainMethod, register_method
from .config import META_ARCHITECTURE, add_simdetr_config, validate_simdetr_config
from .export import simdetr_export
from .meta_arch import SimDETRRCNN  # noqa: F401  (registers "SimDETRRCNN" in Detectron2's META_ARCH_REGISTRY)
from .trainer import SimDETRTrainer

register_method(PretrainMethod(
    name=META_ARCHITECTURE,
    add_config=add_simdetr_config,
    validate_config=validate_simdetr_config,
    trainer=SimDETRTrainer,
    # A checkpoint found by its mark (tools/convert_to_d2.py) keeps the regressor: our configs
    # regress class-agnostically. A run exports by its own config (SimDETRTrainer.export_spec).
    export=simdetr_export(True),
))
