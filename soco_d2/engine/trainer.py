"""Detectron2 trainer for SoCo pretraining: three-view loader, LARS, momentum target."""
import logging

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.mapper import SoCoDatasetMapper
from ..data import num_images
from ..solver import build_soco_optimizer, resolve_epochs
from .ddp import finish_trainer_init
from .export_hook import ExportTrunkHook
from .hooks import MomentumUpdateHook

logger = logging.getLogger(__name__)

def build_soco_train_loader(cfg):
    """Pretraining loader: records of DATASETS.TRAIN mapped to views by SoCoDatasetMapper.

    Records need no annotations and no image size, so empty-annotation filtering and aspect
    ratio grouping (Detectron2 defaults meant for detection) are off.
    """
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=False,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    return build_detection_train_loader(
        dataset=dataset,
        mapper=SoCoDatasetMapper(cfg, is_train=True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


class SoCoTrainer(DefaultTrainer):
    """DefaultTrainer with SoCo's loader, optimizer and momentum hook.

    ``__init__`` is Detectron2's, with three differences: SOLVER.EPOCHS is turned into
    iterations from the size of DATASETS.TRAIN, DistributedDataParallel also works on
    CPU processes (gloo), and ``SOLVER.AMP.PRECISION`` picks fp16 or bf16.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is skipped on purpose; TrainerBase's is what it calls first.
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SOLVER.EPOCHS > 0:
            cfg = cfg.clone()
            cfg.defrost()
            resolve_epochs(cfg, num_images)
            cfg.freeze()

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        # find_unused_parameters: the FPN levels computed change from step to step (only
        # levels some box is assigned to run, see modeling/fpn_levels.py).
        finish_trainer_init(self, cfg, model, optimizer, data_loader, find_unused_parameters=True)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_soco_train_loader(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_soco_optimizer(cfg, model)

    def build_hooks(self):
        ret = super().build_hooks()
        # Right after the LR scheduler hook, before the checkpointer, so a checkpoint taken
        # after step k holds the target that step k+1 will use.
        ret.insert(2, MomentumUpdateHook(self.cfg.MODEL.SOCO.MOMENTUM))
        # model_final_trunk.pth: the online trunk as Detectron2 weights, when training ends.
        ret.append(ExportTrunkHook(self.cfg.OUTPUT_DIR))
        return ret

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # Pretraining has no evaluation; fine-tuning uses train_net.py's detection trainer.
        return {}
