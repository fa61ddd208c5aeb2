"""Training hooks every pretraining method shares: the momentum target's update, the trunk
export when training ends, and the per-iteration seed of random draws inside the forward."""
import logging
import os
from typing import Sequence, Union

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..export import ExportSpec, export_trunk
from ..modeling.momentum import momentum_at

__all__ = ["MomentumUpdateHook", "ExportTrunkHook", "ForwardSeedHook"]

logger = logging.getLogger(__name__)


class MomentumUpdateHook(HookBase):
    """After each optimizer step, move the target network towards the online one (Sec. 6).

    For models with a momentum target (:class:`soco_d2.modeling.MomentumTarget`). The momentum
    is a function of the trainer's iteration only, so a resumed run continues the schedule
    exactly where the checkpoint left it. Logged as ``name`` (``soco/momentum`` for SoCo).
    """

    def __init__(self, base_momentum: float, name: str):
        self.base_momentum = base_momentum
        self.name = name

    def after_step(self):
        trainer = self.trainer
        # The update after step k produces the target used at step k+1.
        m = momentum_at(trainer.iter + 1, trainer.max_iter, self.base_momentum)
        model = trainer.model
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        model.update_target(m)
        trainer.storage.put_scalar(self.name, m, smoothing_hint=False)


class ExportTrunkHook(HookBase):
    """After the last iteration, write ``output_dir/filename`` with :func:`export_trunk`.

    Runs on the main process only, from the in-memory model (DDP unwrapped), so the file holds
    the same weights as the final checkpoint. Nothing is written when training stopped early
    (an exception), as Detectron2's PeriodicCheckpointer does for ``model_final.pth``.

    Args:
        spec: the export declaration of the method that trains (or declarations to find it
            among by the model's keys, see :func:`export_trunk`).
    """

    def __init__(self, output_dir: str, spec: Union[ExportSpec, Sequence[ExportSpec]],
                 filename: str = "model_final_trunk.pth"):
        self.path = os.path.join(output_dir, filename)
        self.spec = spec

    def after_train(self):
        # TrainerBase.train leaves iter == max_iter only when the last step succeeded.
        if not comm.is_main_process() or self.trainer.iter < self.trainer.max_iter:
            return
        model = self.trainer.model
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        summary = export_trunk(model.state_dict(), self.path, self.spec, verbose=False)
        logger.info(
            f"{summary['method']} trunk for fine-tuning ({summary['kept']} keys): {self.path}; "
            f"use it as MODEL.WEIGHTS with a config from configs/transfer/"
        )


class ForwardSeedHook(HookBase):
    """Before each step, seed torch's RNG (CPU and CUDA) from (the data stream's seed, the
    iteration, the process rank).

    For models whose forward draws random numbers from torch (e.g. Detectron2's anchor and RoI
    samplers, ``torch.randperm``): the draws of iteration i are then a function of i, so a run
    resumed from a checkpoint draws what the uninterrupted run drew. Needs a trainer with a
    ``data_stream`` (:class:`soco_d2.engine.trainer.PretrainTrainer`), whose seed checkpoints
    carry.
    """

    _TAG = 0x5EED0004  # distinct from the data stream's seed domains

    def before_train(self):
        # Detectron2's step trainer creates its data iterator at its first step, and creating a
        # torch DataLoader iterator draws a seed from torch's RNG: that would happen after this
        # hook seeded iteration start_iter, in a fresh run and in a resumed one at different
        # iterations. Create it now, before any per-iteration seed.
        step_trainer = getattr(self.trainer, "_trainer", self.trainer)
        getattr(step_trainer, "_data_loader_iter", None)

    def before_step(self):
        words = np.random.SeedSequence(
            [self._TAG, self.trainer.data_stream.seed, self.trainer.iter, comm.get_rank()]
        ).generate_state(2, dtype=np.uint32)
        torch.manual_seed(int(words[0]) << 32 | int(words[1]))
