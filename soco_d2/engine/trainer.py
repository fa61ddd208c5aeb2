"""Detectron2 trainer for SoCo pretraining: three-view loader, LARS, momentum target."""
import logging
import os

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..utils.atomic_io import atomic_write_bytes
from ..config.checks import check_datasets
from ..methods.soco.mapper import SoCoDatasetMapper
from ..data import num_images
from ..data.sample_stream import DataStream, GlobalSampleStream, SampleStreamDataset, resolve_data_seed
from ..solver import build_soco_optimizer, resolve_epochs
from .ddp import finish_trainer_init
from .export_hook import ExportTrunkHook
from .hooks import MomentumUpdateHook

logger = logging.getLogger(__name__)


def build_soco_train_loader(cfg, seed=None):
    """Pretraining loader: records of DATASETS.TRAIN mapped to views by SoCoDatasetMapper.

    The data is a pure function of (seed, global sample number), see
    :mod:`soco_d2.data.sample_stream`: iteration i holds samples [i*B, (i+1)*B) of SOLVER.IMS_PER_BATCH
    B, split over the processes, whatever their number and DATALOADER.NUM_WORKERS. Records need
    no annotations and no image size, so empty-annotation filtering and aspect ratio grouping
    (Detectron2 defaults meant for detection) are off.

    Args:
        seed: the stream's seed; default :func:`resolve_data_seed` of cfg.SEED.

    Returns:
        Detectron2's batched loader; :func:`data_stream_of` gives its :class:`DataStream`.
    """
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=False,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    seed = resolve_data_seed(cfg.SEED) if seed is None else seed
    dataset = SampleStreamDataset(records, SoCoDatasetMapper(cfg, is_train=True), seed)
    return build_detection_train_loader(
        dataset=dataset,
        sampler=GlobalSampleStream(cfg.SOLVER.IMS_PER_BATCH),
        mapper=None,  # SampleStreamDataset maps, with the per-sample seed
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def data_stream_of(data_loader) -> DataStream:
    """The :class:`DataStream` of a loader from :func:`build_soco_train_loader`."""
    iterable = data_loader.dataset  # Detectron2's ToIterableDataset(dataset, sampler)
    return DataStream(iterable.dataset, iterable.sampler)


class SoCoTrainer(DefaultTrainer):
    """DefaultTrainer with SoCo's loader, optimizer and momentum hook.

    ``__init__`` is Detectron2's, with these differences: the training data is checked to
    exist first, SOLVER.EPOCHS is turned into iterations from the size of DATASETS.TRAIN,
    DistributedDataParallel also works on CPU processes (gloo), and ``SOLVER.AMP.PRECISION``
    picks fp16 or bf16.

    Resuming is exact: checkpoints are written atomically and carry, besides model (online
    and target), optimizer (LARS buffers), LR scheduler and iteration, the data stream's seed;
    :meth:`resume_or_load` positions the stream at the resumed iteration. The momentum
    schedule is a function of the iteration only.
    """

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

        # find_unused_parameters: the FPN levels computed change from step to step (only
        # levels some box is assigned to run, see modeling/fpn_levels.py).
        finish_trainer_init(self, cfg, model, optimizer, data_loader, find_unused_parameters=True)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_soco_train_loader(cfg)

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, then the data stream continues at ``start_iter``."""
        super().resume_or_load(resume=resume)
        self.data_stream.set_start_iter(self.start_iter)

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
