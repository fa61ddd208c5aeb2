"""MontageTrainer: the shared PretrainTrainer with Montage's sample records, mapper and, for the
label-free variant, the pseudo-label hook."""
from detectron2.data import MetadataCatalog

from ...config.checks import ConfigError, check_datasets, raise_problems
from ...data.loader import build_pretrain_loader, load_pretrain_records
from ...engine.trainer import PretrainTrainer
from .config import check_montage_files, class_count_problem
from .export import MONTAGE_EXPORT
from .mapper import MontageDatasetMapper
from .pseudo_labels import PseudoLabelHook, build_frozen_trunk
from .samples import sample_records

__all__ = ["MontageTrainer", "load_sample_records", "check_montage_data"]


def check_montage_data(cfg) -> None:
    """What Montage needs of DATASETS.TRAIN, checked before the model is built.

    SAMPLES "gt": labelled detection sets whose category count is MODEL.MONTAGE.NUM_CLASSES;
    SAMPLES "proposals": pretraining sets with a proposal file; and the frozen trunk's files.

    Raises:
        ConfigError: naming the key, the dataset and what to change.
    """
    check_datasets(cfg)
    check_montage_files(cfg)
    problems = []
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        src = meta.get("soco_source", None)
        if cfg.INPUT.MONTAGE.SAMPLES == "gt":
            classes = meta.get("thing_classes", None)
            if classes is None and src is not None:
                problems.append(
                    f"INPUT.MONTAGE.SAMPLES is 'gt' but DATASETS.TRAIN '{name}' is a pretraining "
                    "set without labels: use a labelled detection set (e.g. soco_synthetic_det_train, "
                    "coco_2017_train) or INPUT.MONTAGE.SAMPLES 'proposals'"
                )
            elif classes is not None:
                err = class_count_problem(cfg, name, len(classes))
                if err:
                    problems.append(str(err))
        elif src is not None and not src["proposal_file"] and not cfg.MODEL.LOAD_PROPOSALS:
            problems.append(
                f"INPUT.MONTAGE.SAMPLES is 'proposals' but DATASETS.TRAIN '{name}' has no proposal "
                "file: register it with one (DATASETS.SOCO_REGISTER) or use SAMPLES 'gt'"
            )
    raise_problems(problems, "Montage training data does not fit the config")


def load_sample_records(cfg):
    """The sample records (``samples.py``) of DATASETS.TRAIN for INPUT.MONTAGE.SAMPLES (the
    first INPUT.MONTAGE.MAX_IMAGES when > 0)."""
    s = cfg.INPUT.MONTAGE
    records = load_pretrain_records(cfg)
    if s.MAX_IMAGES > 0:
        records = records[: s.MAX_IMAGES]
    try:
        out = sample_records(records, s.SAMPLES, s.PROPOSALS_PER_IMAGE)
    except ValueError as e:
        raise ConfigError(f"INPUT.MONTAGE.SAMPLES: {e}") from e
    top = max((int(r["classes"].max()) for r in out if len(r["classes"])), default=-1)
    if top >= cfg.MODEL.MONTAGE.NUM_CLASSES:
        raise ConfigError(
            f"MODEL.MONTAGE.NUM_CLASSES is {cfg.MODEL.MONTAGE.NUM_CLASSES} but DATASETS.TRAIN "
            f"{tuple(cfg.DATASETS.TRAIN)} has category id {top}; set MODEL.MONTAGE.NUM_CLASSES {top + 1} or more"
        )
    return out


class MontageTrainer(PretrainTrainer):
    """:class:`soco_d2.engine.trainer.PretrainTrainer` (data check, epochs, DDP on CPU, AMP,
    exact resume, optimizer, backbone export, monitors) with Montage's data: every image of
    DATASETS.TRAIN leads one montage per epoch, its partners drawn from the whole set
    (``mapper.py``). Label-free (INPUT.MONTAGE.SAMPLES "proposals"): :class:`PseudoLabelHook`
    computes and refreshes the pseudo-classes (``pseudo_labels.py``)."""

    export = MONTAGE_EXPORT

    def __init__(self, cfg):
        check_montage_data(cfg)  # before anything is built
        super().__init__(cfg)

    @classmethod
    def build_mapper(cls, cfg, records=None):
        return MontageDatasetMapper(cfg, load_sample_records(cfg) if records is None else records)

    @classmethod
    def build_train_loader(cls, cfg):
        records = load_sample_records(cfg)
        return build_pretrain_loader(cfg, cls.build_mapper(cfg, records), records=records)

    def build_hooks(self):
        ret = super().build_hooks()
        cfg = self.cfg
        if cfg.INPUT.MONTAGE.SAMPLES == "proposals":
            p = cfg.MODEL.MONTAGE.PSEUDO
            if p.FEATURES == "trunk":
                frozen = build_frozen_trunk(p.TRUNK_CONFIG, p.TRUNK_WEIGHTS, cfg.MODEL.DEVICE)
                trunk_fn = lambda model: frozen  # noqa: E731
            else:
                trunk_fn = lambda model: model.probe_trunk()  # noqa: E731
            stream = self.data_stream.dataset.records
            records = [stream[i] for i in range(len(stream))]
            # Before the writers (hooks inserted at 0 run first), so pseudo/* is logged.
            ret.insert(0, PseudoLabelHook(
                records, trunk_fn, k=cfg.MODEL.MONTAGE.NUM_CLASSES, iters=p.KMEANS_ITERS,
                fit_samples=p.FIT_SAMPLES, batch_size=p.BATCH_SIZE, period=p.REFRESH_PERIOD,
                image_format=cfg.INPUT.FORMAT,
            ))
        return ret
