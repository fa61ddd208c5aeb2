"""Fine-tuning a stock Detectron2 detector from exported pretraining weights (SOCO_SPEC.md Sec. 7).

Everything is Detectron2's DefaultTrainer (PreciseBN, checkpointing, evaluation hooks) except
that it also runs as several CPU processes and that the evaluator is chosen from the dataset's
``evaluator_type``.
"""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, LVISEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .ddp import finish_trainer_init

__all__ = ["DetectionTrainer", "build_detection_evaluator"]


def build_detection_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """The evaluator for ``dataset_name`` by its metadata's ``evaluator_type``.

    "coco" -> COCOEvaluator (bbox, and segm when the model predicts masks), "lvis" ->
    LVISEvaluator (needs the ``lvis`` package), "pascal_voc" -> PascalVOCDetectionEvaluator
    (VOC07 11-point and COCO-style AP).

    Raises:
        ValueError: any other or no evaluator_type (names the dataset).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        return COCOEvaluator(
            dataset_name, output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE
        )
    if evaluator_type == "lvis":
        return LVISEvaluator(
            dataset_name, output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE
        )
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise ValueError(
        f"No evaluator for dataset '{dataset_name}': its metadata has evaluator_type="
        f"{evaluator_type!r}; DetectionTrainer supports 'coco', 'lvis' and 'pascal_voc'."
    )


class DetectionTrainer(DefaultTrainer):
    """DefaultTrainer for fine-tuning (GeneralizedRCNN etc.) that also runs on CPU processes.

    ``__init__`` does what DefaultTrainer's does, except that DistributedDataParallel is
    created without device ids for CPU models (see :mod:`soco_d2.engine.ddp`) and
    ``SOLVER.AMP.PRECISION`` is honoured. PreciseBN (``TEST.PRECISE_BN``), periodic
    checkpoints and the final evaluation are DefaultTrainer's hooks.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is replaced, not called: TrainerBase's is what it calls first.
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        finish_trainer_init(self, cfg, model, optimizer, data_loader)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_detection_evaluator(cfg, dataset_name, output_folder)
