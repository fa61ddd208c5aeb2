"""Training hooks every pretraining method shares: the momentum target's update and the trunk
export when training ends."""
import logging
import os
from typing import Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..export import ExportSpec, export_trunk
from ..modeling.momentum import momentum_at

__all__ = ["MomentumUpdateHook", "ExportTrunkHook"]

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
        spec: the method's export declaration; None: found from the model's keys.
    """

    def __init__(self, output_dir: str, filename: str = "model_final_trunk.pth",
                 spec: Optional[ExportSpec] = None):
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
