"""PretrainTrainer: Detectron2's DefaultTrainer for label-free pretraining, shared by all methods.

A method's trainer (e.g. ``soco_d2/methods/soco/trainer.py``) subclasses it and overrides only
what differs, at least :meth:`PretrainTrainer.build_mapper`.
"""
import logging
import os
from typing import Optional

import torch

from detectron2.engine import DefaultTrainer, hooks
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config.checks import check_datasets
from ..data import num_images
from ..data.loader import build_pretrain_loader, data_stream_of
from ..export import ExportSpec
from ..solver import build_soco_optimizer, resolve_epochs
from ..utils.atomic_io import atomic_write_bytes
from .ddp import finish_trainer_init
from .hooks import ExportTrunkHook, MomentumUpdateHook
from .monitors import LOG_PERIOD, ModelMonitorHook, ProbeHook, UpdateRatioHook

__all__ = ["PretrainTrainer"]

logger = logging.getLogger(__name__)


class PretrainTrainer(DefaultTrainer):
    """DefaultTrainer with the pretraining loader, LARS, the momentum hook and the trunk export.

    ``__init__`` is Detectron2's, with these differences: the training data is checked to
    exist first, SOLVER.EPOCHS is turned into iterations from the size of DATASETS.TRAIN,
    DistributedDataParallel also works on CPU processes (gloo), and ``SOLVER.AMP.PRECISION``
    picks fp16 or bf16.

    Resuming is exact: checkpoints are written atomically and carry, besides model (online
    and target), optimizer (LARS buffers), LR scheduler and iteration, the data stream's seed;
    :meth:`resume_or_load` positions the stream at the resumed iteration. A model with a
    momentum target (``update_target``, see :class:`soco_d2.modeling.MomentumTarget`) gets
    :class:`MomentumUpdateHook`, whose schedule is a function of the iteration only.

    Subclasses define :meth:`build_mapper` and :attr:`export` (or :meth:`export_spec`), and may
    set :attr:`ddp_kwargs`.
    """

    #: Extra DistributedDataParallel arguments of the method (e.g. find_unused_parameters).
    ddp_kwargs: dict = {}
    #: What the run exports when it ends, declared by the method
    #: (``soco_d2/methods/<method>/export.py``).
    export: Optional[ExportSpec] = None

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is skipped on purpose; TrainerBase's is what it calls first.
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_datasets(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SOLVER.EPOCHS > 0:
            cfg = cfg.clone()
            cfg.defrost()
            resolve_epochs(cfg, num_images)
            cfg.freeze()
            if comm.is_main_process() and cfg.OUTPUT_DIR:
                # default_setup() saved config.yaml before epochs became iterations
                atomic_write_bytes(
                    os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump().encode("utf-8")
                )

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.data_stream = data_stream_of(data_loader)
        finish_trainer_init(self, cfg, model, optimizer, data_loader, **self.ddp_kwargs)

    @classmethod
    def build_mapper(cls, cfg):
        """The method's dataset mapper: ``mapper(record, seed=words) -> dict or None``."""
        raise NotImplementedError(f"{cls.__name__} must define build_mapper(cfg)")

    @classmethod
    def export_spec(cls, cfg) -> ExportSpec:
        """What the run exports when it ends: :attr:`export`. A method whose export depends on
        its config overrides this."""
        if cls.export is None:
            raise NotImplementedError(f"{cls.__name__} must set export (its ExportSpec) or define export_spec(cfg)")
        return cls.export

    @classmethod
    def build_train_loader(cls, cfg):
        return build_pretrain_loader(cfg, cls.build_mapper(cfg))

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, then the data stream continues at ``start_iter``. A model with a
        momentum target that starts a run (not resumed) copies its online network into the target
        after loading: MODEL.WEIGHTS fills the online network only, and a target left at its
        random initialisation would give the first hundreds of steps random regression targets.
        A resumed checkpoint keeps its own target. In a fresh run, the parameters and buffers
        that :meth:`loads_from_weights` refuses keep their initialisation."""
        model = getattr(self.model, "module", self.model)
        kept = {}
        if self.cfg.MODEL.WEIGHTS and not (resume and self.checkpointer.has_checkpoint()):
            kept = {k: v.detach().clone() for k, v in model.state_dict().items()
                    if not self.loads_from_weights(k)}
        super().resume_or_load(resume=resume)
        if kept:
            # In place: load_state_dict(kept, strict=False) would let FrozenBatchNorm2d refill the
            # running statistics it does not find in ``kept`` (the backbone's) with 0 and 1.
            state = model.state_dict()
            with torch.no_grad():
                for k, v in kept.items():
                    state[k].copy_(v)
            modules = sorted({".".join(k.split(".")[:2]) for k in kept})
            logger.info(f"Kept {len(kept)} tensors at their initialisation, not loaded from "
                        f"{self.cfg.MODEL.WEIGHTS}: {', '.join(modules)}")
        self.data_stream.set_start_iter(self.start_iter)
        if self.start_iter > 0:
            self._learning_rate_from_schedule()
        if self.start_iter == 0 and hasattr(model, "update_target"):
            model.update_target(0.0)  # momentum 0: an exact copy
            logger.info("Momentum target initialised as a copy of the online network"
                        + (f" ({self.cfg.MODEL.WEIGHTS})" if self.cfg.MODEL.WEIGHTS else ""))

    def _learning_rate_from_schedule(self) -> None:
        """A resumed run's first step uses THIS run's schedule at the resumed iteration, not the
        learning rate stored with the optimizer in the checkpoint. The two are the same number
        when the run resumes its own schedule, and differ when the schedule changed: a run
        continued to a longer schedule (SimDETR's 2 rounds continuing its 1-round run, where the
        stored value is the end of round 0 and the schedule says the warmup of round 1), or
        a lengthened SOLVER.MAX_ITER. Detectron2's schedulers (LRMultiplier) compute it from the
        restored iteration; another scheduler keeps the stored value."""
        if not isinstance(self.scheduler, LRMultiplier):
            return
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
            group["lr"] = lr

    def loads_from_weights(self, key: str) -> bool:
        """Whether a fresh run takes model key ``key`` from MODEL.WEIGHTS (all keys by
        default; a method that starts from part of a trunk overrides this)."""
        return True

    def state_dict(self):
        ret = super().state_dict()
        ret["data_stream"] = self.data_stream.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        if "data_stream" in state_dict:
            self.data_stream.load_state_dict(state_dict["data_stream"])
        else:
            logger.warning("The checkpoint has no data stream state: resumed data order differs")
        super().load_state_dict(state_dict)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_soco_optimizer(cfg, model)

    def build_hooks(self):
        ret = super().build_hooks()
        model = getattr(self.model, "module", self.model)  # unwrap DistributedDataParallel
        if hasattr(model, "update_target"):
            # Right after the LR scheduler hook, before the checkpointer, so a checkpoint taken
            # after step k holds the target that step k+1 will use.
            name = f"{self.cfg.MODEL.META_ARCHITECTURE.lower()}/momentum"
            ret.insert(2, MomentumUpdateHook(model.base_momentum, name))
        # model_final_trunk.pth: the trunk as Detectron2 weights, when training ends, as the
        # method declares it (soco_d2/methods/<method>/export.py).
        ret.append(ExportTrunkHook(self.cfg.OUTPUT_DIR, self.export_spec(self.cfg)))
        # Learning monitors (engine/monitors.py), before the writers so that what they put in
        # the event storage is written at the same iteration.
        writer = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret))
        monitors = []
        if comm.is_main_process():  # only the main process writes metrics
            monitors.append(UpdateRatioHook(LOG_PERIOD))
            if hasattr(model, "monitors"):
                monitors.append(ModelMonitorHook(LOG_PERIOD))
        probe = self.cfg.TEST.PROBE
        if probe.DATASET and hasattr(model, "probe_trunk"):
            monitors.append(ProbeHook(
                probe.DATASET, probe.PERIOD, self.cfg.INPUT.FORMAT,
                probe.MIN_SIZE, probe.MAX_SIZE, probe.MAX_IMAGES, self.cfg.OUTPUT_DIR,
                stored_bn=probe.STORED_BN,
            ))
        ret[writer:writer] = monitors
        return ret

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # Pretraining has no evaluation; fine-tuning uses train_net.py's detection trainer.
        return {}
