"""Training hooks every pretraining method shares."""
from detectron2.engine import HookBase

from ..modeling.momentum import momentum_at

__all__ = ["MomentumUpdateHook"]


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
