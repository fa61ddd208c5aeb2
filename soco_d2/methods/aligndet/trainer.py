"""AlignDetTrainer: the shared PretrainTrainer with AlignDet's mapper, SGD schedule and a target
that starts as a copy of the loaded weights."""
import logging

from ...engine.hooks import ForwardSeedHook
from ...engine.trainer import PretrainTrainer
from .export import aligndet_export
from .mapper import AlignDetDatasetMapper

__all__ = ["AlignDetTrainer"]

BACKBONE_PREFIX = "backbone.bottom_up."  # the ResNet of an FPN detector, in Detectron2's names

logger = logging.getLogger(__name__)


class AlignDetTrainer(PretrainTrainer):
    """:class:`soco_d2.engine.trainer.PretrainTrainer` (data check, epochs, DDP on CPU, AMP,
    exact resume, momentum hook, export) with AlignDet's mapper, and:

    - a fresh run loads only the backbone from MODEL.WEIGHTS (MODEL.ALIGNDET.LOAD_BACKBONE_ONLY),
      and the target copies the online network once it is loaded, so both start from the same
      backbone, FPN and heads; a run without MODEL.WEIGHTS is warned about
      loudly (the frozen backbone would stay random);
    - the random draws inside the forward (Detectron2's anchor and RoI sampling) are seeded per
      iteration (:class:`ForwardSeedHook`), so a resumed run is exact;
    - the export keeps the box regressor when MODEL.ALIGNDET.EXPORT_REGRESSION is set.
    """

    # The regression layer is unused with MODEL.ALIGNDET.REGRESSION False.
    ddp_kwargs = {"find_unused_parameters": True}

    @classmethod
    def build_mapper(cls, cfg):
        return AlignDetDatasetMapper(cfg, is_train=True)

    @classmethod
    def export_spec(cls, cfg):
        return aligndet_export(cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.ALIGNDET.EXPORT_REGRESSION)

    def build_hooks(self):
        return [ForwardSeedHook()] + super().build_hooks()

    def loads_from_weights(self, key: str) -> bool:
        """With MODEL.ALIGNDET.LOAD_BACKBONE_ONLY, a fresh run takes only the backbone
        (``backbone.bottom_up.*``) from MODEL.WEIGHTS, whatever else the file holds."""
        return not self.cfg.MODEL.ALIGNDET.LOAD_BACKBONE_ONLY or key.startswith(BACKBONE_PREFIX)

    def resume_or_load(self, resume=True):
        """PretrainTrainer's (which, unless a checkpoint was resumed, copies the online network
        into the target), and a loud warning when the backbone has no pretrained weights."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            return
        model = getattr(self.model, "module", self.model)
        if not self.cfg.MODEL.WEIGHTS:
            frozen = "stays at its RANDOM initialisation for the whole run" if model.freeze_backbone \
                else "starts from a RANDOM initialisation"
            logger.warning(
                "\n" + "!" * 88 + "\n!! AlignDet with MODEL.WEIGHTS empty: the backbone " + frozen +
                ".\n!! Pass a pretrained trunk, e.g. MODEL.WEIGHTS output/soco_demo_synthetic/"
                "model_final_trunk.pth\n" + "!" * 88
            )
