"""Training hooks for SoCo."""
from detectron2.engine import HookBase

from ..modeling.momentum import momentum_at


class MomentumUpdateHook(HookBase):
    """After each optimizer step, move the target network towards the online one (Sec. 6).

    The momentum is a function of the trainer's iteration only, so a resumed run continues the
    schedule exactly where the checkpoint left it. Logged as ``soco/momentum``.
    """

    def __init__(self, base_momentum: float):
        self.base_momentum = base_momentum

    def after_step(self):
        trainer = self.trainer
        # The update after step k produces the target used at step k+1.
        m = momentum_at(trainer.iter + 1, trainer.max_iter, self.base_momentum)
        model = trainer.model
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        model.update_target(m)
        trainer.storage.put_scalar("soco/momentum", m, smoothing_hint=False)
