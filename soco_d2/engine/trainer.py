"""Detectron2 trainer for SoCo pretraining: three-view loader, LARS, momentum target."""
import logging
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.mapper import SoCoDatasetMapper
from ..data import num_images
from ..solver import build_soco_optimizer, resolve_epochs
from .hooks import MomentumUpdateHook

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


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

        on_gpu = next(model.parameters()).is_cuda
        # find_unused_parameters: the FPN levels computed change from step to step (only
        # levels some box is assigned to run, see modeling/fpn_levels.py).
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=True,
            **({} if on_gpu else {"device_ids": None}),
        )
        if cfg.SOLVER.AMP.ENABLED:
            dtype = _AMP_DTYPES[cfg.SOLVER.AMP.PRECISION]
            # bf16 has fp32's range: no loss scaling needed.
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            self._trainer = AMPTrainer(
                model, data_loader, optimizer, grad_scaler=scaler, precision=dtype
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        return ret

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # Pretraining has no evaluation; fine-tuning uses train_net.py's detection trainer.
        return {}
