"""SoCoTrainer: the shared PretrainTrainer with SoCo's three-view mapper."""
from ...data.loader import build_pretrain_loader
from ...engine.trainer import PretrainTrainer
from .export import SOCO_EXPORT
from .mapper import SoCoDatasetMapper

__all__ = ["SoCoTrainer", "build_soco_train_loader"]


class SoCoTrainer(PretrainTrainer):
    """:class:`soco_d2.engine.trainer.PretrainTrainer` (data check, epochs, DDP on CPU, AMP,
    exact resume, LARS, momentum hook, trunk export) with SoCo's mapper."""

    # The FPN levels computed change from step to step (only levels some box is assigned to
    # run, see fpn_levels.py).
    ddp_kwargs = {"find_unused_parameters": True}
    export = SOCO_EXPORT

    @classmethod
    def build_mapper(cls, cfg):
        return SoCoDatasetMapper(cfg, is_train=True)


def build_soco_train_loader(cfg, seed=None):
    """SoCo's pretraining loader outside a trainer (see ``build_pretrain_loader``)."""
    return build_pretrain_loader(cfg, SoCoTrainer.build_mapper(cfg), seed)
