"""SimDETRTrainer: the shared PretrainTrainer training a stock R-CNN on SimDETR's pseudo-labels,
round after round."""
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.solver import build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import CompositeParamScheduler

from ...config.checks import check_datasets, raise_problems
from ...data.loader import build_pretrain_loader, data_stream_of
from ...engine.hooks import ForwardSeedHook
from ...engine.trainer import PretrainTrainer
from .export import simdetr_export
from .mapper import SimDETRDatasetMapper
from .pseudo_labels import register_pseudo_labels
from .self_training import SelfTrainingHook, SelfTrainingSettings

__all__ = ["SimDETRTrainer", "check_simdetr_data"]

BACKBONE_PREFIX = "backbone.bottom_up."  # the ResNet of an FPN detector, in Detectron2's names

logger = logging.getLogger(__name__)


def check_simdetr_data(cfg) -> None:
    """What SimDETR needs on disk before the model is built: the training sets (and their
    proposal files) of :func:`check_datasets`, proposals for round 0 unless
    MODEL.SIMDETR.PSEUDO_LABELS names a json, and that json.

    Raises:
        ConfigError: naming the key, the dataset and what to do.
    """
    check_datasets(cfg)
    problems = []
    initial = cfg.MODEL.SIMDETR.PSEUDO_LABELS
    if initial:
        if not os.path.isfile(initial):
            problems.append(f"MODEL.SIMDETR.PSEUDO_LABELS: file does not exist: {initial} (make it with "
                            "tools/make_pseudo_labels.py, or set it to '' to compute round 0 at start)")
    else:
        for name in cfg.DATASETS.TRAIN:
            src = MetadataCatalog.get(name).get("soco_source", None)
            if src is not None and not src["proposal_file"]:
                problems.append(
                    f"DATASETS.TRAIN '{name}' has no proposal file: SimDETR's round-0 pseudo-boxes are its "
                    "proposals. Make them (tools/generate_proposals.py, --from-features CHECKPOINT for semantic "
                    "proposals) and register the set with them (DATASETS.SOCO_REGISTER)")
    raise_problems(problems, "SimDETR training data not found")


class SimDETRTrainer(PretrainTrainer):
    """:class:`soco_d2.engine.trainer.PretrainTrainer` (data check, epochs, DDP on CPU, AMP,
    exact resume, monitors, probe hook, export) training SimDETR's GeneralizedRCNN:

    - rounds: the run is MODEL.SIMDETR.ROUNDS times the SOLVER schedule, whose learning rate
      schedule (warmup, steps or cosine) restarts with each round; :class:`SelfTrainingHook`
      makes each round's pseudo-labels (round 0 before the first iteration) and
      :meth:`use_pseudo_labels` streams them from then on, through Detectron2's dataset catalog
      and ``DatasetMapper``;
    - a fresh run takes only the ResNet from MODEL.WEIGHTS (MODEL.SIMDETR.LOAD_BACKBONE_ONLY);
    - the forward's random draws (anchor and RoI sampling) are seeded per iteration
      (:class:`ForwardSeedHook`), so a resumed run is exact, mid-round or at a round boundary;
    - the export keeps the box regressor when it is class-agnostic (``export.py``).

    Until round 0's labels exist (before the first iteration), the loader built by ``__init__``
    streams the proposal records and is never iterated.
    """

    def __init__(self, cfg):
        check_simdetr_data(cfg)  # before anything is built
        self._resumed_stream = None
        super().__init__(cfg)

    @property
    def rounds(self) -> int:
        return int(self.cfg.MODEL.SIMDETR.ROUNDS)

    # ------------------------------------------------------------------ data
    @classmethod
    def build_mapper(cls, cfg):
        return SimDETRDatasetMapper(cfg)

    def use_pseudo_labels(self, path: str) -> None:
        """Train on the pseudo-label json ``path`` from the current iteration on: registered in
        Detectron2's catalog, its records streamed as the data stream (same seed) continues."""
        records = DatasetCatalog.get(register_pseudo_labels(path))
        loader = build_pretrain_loader(self.cfg, self.build_mapper(self.cfg), seed=self.data_stream.seed,
                                       records=records)
        stream = data_stream_of(loader)
        if self._resumed_stream is not None:  # the checkpoint's stream, checked against this set
            stream.load_state_dict(self._resumed_stream)
            self._resumed_stream = None
        stream.set_start_iter(self.iter)
        self.data_stream = stream
        self._trainer.reset_data_loader(lambda: loader)
        # Create the iterator now: it draws a seed from torch's RNG, which must happen before
        # ForwardSeedHook seeds this iteration, in a fresh and in a resumed run alike.
        getattr(self._trainer, "_data_loader_iter")

    def load_state_dict(self, state_dict):
        """PretrainTrainer's, except that the data stream's state is applied to the stream of the
        checkpoint's round, once :class:`SelfTrainingHook` has rebuilt it (:meth:`use_pseudo_labels`)."""
        state_dict = dict(state_dict)
        self._resumed_stream = state_dict.pop("data_stream", None)
        super(PretrainTrainer, self).load_state_dict(state_dict)

    # ------------------------------------------------------------------ schedule
    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's scheduler of one round (SOLVER.*), repeated MODEL.SIMDETR.ROUNDS times."""
        rounds = int(cfg.MODEL.SIMDETR.ROUNDS)
        one = build_lr_scheduler(cfg, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))._multiplier
        multiplier = CompositeParamScheduler([one] * rounds, [1.0 / rounds] * rounds, ["rescaled"] * rounds)
        return LRMultiplier(optimizer, multiplier, max_iter=rounds * cfg.SOLVER.MAX_ITER)

    @classmethod
    def export_spec(cls, cfg):
        return simdetr_export(cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)

    def build_hooks(self):
        # The run is ROUNDS x the round's SOLVER.MAX_ITER; __init__ (finish_trainer_init) set
        # max_iter to the round's just before building the hooks, which read it.
        self.max_iter = self.rounds * self.cfg.SOLVER.MAX_ITER
        cfg = self.cfg
        s = cfg.MODEL.SIMDETR
        settings = SelfTrainingSettings(
            num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES, max_boxes=s.MAX_BOXES, score_thresh=s.SCORE_THRESH,
            nms_thresh=s.NMS_THRESH, classes=s.CLASSES, kmeans_iters=s.KMEANS_ITERS, fit_samples=s.FIT_SAMPLES,
            batch_size=s.BATCH_SIZE, min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST,
            image_format=cfg.INPUT.FORMAT)
        stream = self.data_stream.dataset.records  # DATASETS.TRAIN's records, loaded once
        records = [stream[i] for i in range(len(stream))] if not s.PSEUDO_LABELS else []
        # First the rounds (they may replace the loader), then the per-iteration seed.
        rounds = SelfTrainingHook(records, settings, rounds=self.rounds, round_iters=cfg.SOLVER.MAX_ITER,
                                  output_dir=cfg.OUTPUT_DIR, initial_file=s.PSEUDO_LABELS)
        return [rounds, ForwardSeedHook()] + super().build_hooks()

    def loads_from_weights(self, key: str) -> bool:
        """With MODEL.SIMDETR.LOAD_BACKBONE_ONLY, a fresh run takes only ``backbone.bottom_up.*``
        from MODEL.WEIGHTS (its FPN, RPN and heads start at Detectron2's initialisation)."""
        return not self.cfg.MODEL.SIMDETR.LOAD_BACKBONE_ONLY or key.startswith(BACKBONE_PREFIX)

    def resume_or_load(self, resume=True):
        """PretrainTrainer's, and a loud warning when there is no pretrained backbone: round 0's
        pseudo-classes would cluster the features of a random network."""
        super().resume_or_load(resume=resume)
        if self.start_iter == 0 and not self.cfg.MODEL.WEIGHTS:
            logger.warning(
                "\n" + "!" * 88 + "\n!! SimDETR with MODEL.WEIGHTS empty: round 0 clusters the features of a "
                "RANDOM backbone.\n!! Pass a self-supervised trunk, e.g. MODEL.WEIGHTS "
                "output/soco_R18_FPN_imagenette_cpu/model_final_trunk.pth\n" + "!" * 88)
