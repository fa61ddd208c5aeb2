"""Export the online trunk for detection when pretraining ends."""
import logging
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..export import export_trunk

__all__ = ["ExportTrunkHook"]

logger = logging.getLogger(__name__)


class ExportTrunkHook(HookBase):
    """After the last iteration, write ``output_dir/filename`` with :func:`export_trunk`.

    Runs on the main process only, from the in-memory model (DDP unwrapped), so the file holds
    the same weights as the final checkpoint. Nothing is written when training stopped early
    (an exception), as Detectron2's PeriodicCheckpointer does for ``model_final.pth``.
    """

    def __init__(self, output_dir: str, filename: str = "model_final_trunk.pth"):
        self.path = os.path.join(output_dir, filename)

    def after_train(self):
        # TrainerBase.train leaves iter == max_iter only when the last step succeeded.
        if not comm.is_main_process() or self.trainer.iter < self.trainer.max_iter:
            return
        model = self.trainer.model
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        summary = export_trunk(model.state_dict(), self.path, verbose=False)
        logger.info(
            f"SoCo trunk for fine-tuning ({summary['kept']} keys): {self.path}; "
            f"use it as MODEL.WEIGHTS with a config from configs/transfer/"
        )
