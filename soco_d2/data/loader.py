"""The pretraining data loader every method shares: DATASETS.TRAIN through the method's mapper,
as the deterministic stream of :mod:`.sample_stream`."""
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

from .sample_stream import DataStream, GlobalSampleStream, SampleStreamDataset, resolve_data_seed

__all__ = ["build_pretrain_loader", "load_pretrain_records", "data_stream_of"]


def load_pretrain_records(cfg):
    """The dataset dicts of DATASETS.TRAIN (with DATASETS.PROPOSAL_FILES_TRAIN when
    MODEL.LOAD_PROPOSALS), images without annotations included."""
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=False,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def build_pretrain_loader(cfg, mapper, seed=None, records=None):
    """Pretraining loader: records of DATASETS.TRAIN mapped by ``mapper``.

    The data is a pure function of (seed, global sample number), see
    :mod:`soco_d2.data.sample_stream`: iteration i holds samples [i*B, (i+1)*B) of
    SOLVER.IMS_PER_BATCH B, split over the processes, whatever their number and
    DATALOADER.NUM_WORKERS. Records need no annotations and no image size, so empty-annotation
    filtering and aspect ratio grouping (Detectron2 defaults meant for detection) are off.

    Args:
        mapper: ``mapper(record, seed=words) -> dict or None`` (None: the image cannot be
            used, another one takes its place), e.g. ``SoCoDatasetMapper``.
        seed: the stream's seed; default :func:`resolve_data_seed` of cfg.SEED.
        records: the dataset dicts to stream, when the method has already loaded (or reshaped)
            them; default: those of DATASETS.TRAIN, loaded here.

    Returns:
        Detectron2's batched loader; :func:`data_stream_of` gives its :class:`DataStream`.
    """
    if records is None:
        records = load_pretrain_records(cfg)
    seed = resolve_data_seed(cfg.SEED) if seed is None else seed
    dataset = SampleStreamDataset(records, mapper, seed)
    return build_detection_train_loader(
        dataset=dataset,
        sampler=GlobalSampleStream(cfg.SOLVER.IMS_PER_BATCH),
        mapper=None,  # SampleStreamDataset maps, with the per-sample seed
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def data_stream_of(data_loader) -> DataStream:
    """The :class:`DataStream` of a loader from :func:`build_pretrain_loader`."""
    iterable = data_loader.dataset  # Detectron2's ToIterableDataset(dataset, sampler)
    return DataStream(iterable.dataset, iterable.sampler)
