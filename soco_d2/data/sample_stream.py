"""A pretraining data stream that is a pure function of (seed, global sample number).

Detectron2's ``TrainingSampler`` restarts its shuffled stream when a job resumes, and mapper
randomness comes from each loader worker's global RNG, so a resumed run would see other data
than an uninterrupted one. Here every training sample has a *global sample number*
``k = 0, 1, 2, ...`` and everything about it follows from ``(seed, k)``:

- which image: epoch ``e = k // N`` uses the permutation of the N records seeded by
  ``(seed, e)`` (:func:`epoch_permutation`), position ``k % N`` in it, so each epoch visits
  every image exactly once;
- its augmentation: the mapper's RNG is seeded by ``(seed, k)`` (:func:`sample_seed`);
- which process computes it: iteration ``i`` is the global batch ``k in [i*B, (i+1)*B)``
  (``B = SOLVER.IMS_PER_BATCH``); rank ``r`` of ``W`` processes takes the contiguous share
  ``[i*B + r*B/W, i*B + (r+1)*B/W)`` (:class:`GlobalSampleStream`).

A job resumed at iteration ``i0`` starts at ``k0 = i0 * B`` and sees exactly what the
uninterrupted job would have seen, for any number of processes and of loader workers, as long
as ``B`` is the same. Detectron2's ``ToIterableDataset`` hands each loader worker whole
per-rank batches in turn (``shard_chunk_size`` = per-rank batch) and the DataLoader returns
them in that order, so the batch order does not depend on ``DATALOADER.NUM_WORKERS`` either.

An image the mapper cannot read (it returns None) is replaced by a substitute drawn from
``(seed, k, attempt)`` rather than by Detectron2's ``MapDataset`` fallback (whose RNG depends on
the worker's history), so skipping a corrupt file does not break exactness either.
"""
import logging
from typing import List, Optional

import numpy as np
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

__all__ = [
    "epoch_permutation",
    "sample_seed",
    "GlobalSampleStream",
    "SampleStreamDataset",
    "DataStream",
    "resolve_data_seed",
]

logger = logging.getLogger(__name__)

# Domain tags mixed into the seed sequences so the streams drawn from one seed are independent.
_PERMUTATION, _AUGMENTATION, _SUBSTITUTE = 0x5EED0001, 0x5EED0002, 0x5EED0003


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n`` records: a permutation of range(n)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_PERMUTATION, seed, epoch])))
    return rng.permutation(n)


def sample_seed(seed: int, k: int, attempt: int = 0) -> np.ndarray:
    """Seed words (uint32, for ``np.random.seed``) of the augmentation of global sample ``k``;
    ``attempt`` > 0 for the substitutes of an unreadable image."""
    return np.random.SeedSequence([_AUGMENTATION, seed, k, attempt]).generate_state(4)


class GlobalSampleStream(torchdata.Sampler):
    """The global sample numbers this rank computes, from iteration ``start_iter`` on, forever.

    Args:
        total_batch_size: B, images per iteration over all processes.
        rank, world_size: this process and how many there are (default: from
            ``detectron2.utils.comm``).
        start_iter: first iteration; :meth:`set_start_iter` changes it until iteration starts.
    """

    def __init__(self, total_batch_size: int, rank: Optional[int] = None,
                 world_size: Optional[int] = None, start_iter: int = 0):
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.total_batch_size = int(total_batch_size)
        if self.total_batch_size <= 0 or self.total_batch_size % self.world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({self.total_batch_size}) must be a positive multiple "
                f"of the number of processes ({self.world_size})"
            )
        self.batch_size = self.total_batch_size // self.world_size
        self.start_iter = int(start_iter)

    def set_start_iter(self, start_iter: int) -> None:
        self.start_iter = int(start_iter)

    def __iter__(self):
        it = self.start_iter
        while True:
            first = it * self.total_batch_size + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)
            it += 1


class SampleStreamDataset(torchdata.Dataset):
    """Global sample number ``k`` -> the mapped sample, a pure function of ``(seed, k)``.

    Args:
        records: the dataset dicts (stored serialized, as Detectron2's DatasetFromList does,
            so loader workers do not copy them on read).
        mapper: ``mapper(record, seed=words) -> dict or None``; None means the image cannot be
            used and a substitute record is tried.
        seed: the stream's seed (see :func:`resolve_data_seed`).
        max_attempts: unreadable images tried in a row for one k before giving up.
    """

    def __init__(self, records: List[dict], mapper, seed: int, max_attempts: int = 16):
        if len(records) == 0:
            raise ValueError("The training set is empty")
        self.records = DatasetFromList(records, copy=False, serialize=True)
        self.num_records = len(records)
        self.mapper = mapper
        self.seed = int(seed)
        self.max_attempts = int(max_attempts)
        self._perm_epoch, self._perm = None, None

    def __len__(self) -> int:
        return self.num_records

    def record_index(self, k: int) -> int:
        """Index into ``records`` of global sample ``k``."""
        epoch, pos = divmod(int(k), self.num_records)
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.seed, epoch, self.num_records)
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, k: int) -> dict:
        index = self.record_index(k)
        tried = []
        for attempt in range(self.max_attempts):
            record = self.records[index]
            out = self.mapper(record, seed=sample_seed(self.seed, k, attempt))
            if out is not None:
                return out
            tried.append(record["file_name"])
            sub = np.random.SeedSequence([_SUBSTITUTE, self.seed, int(k), attempt])
            index = int(np.random.Generator(np.random.PCG64(sub)).integers(self.num_records))
        raise RuntimeError(
            f"{self.max_attempts} images in a row could not be read for sample {k}: {tried}"
        )


class DataStream:
    """The stream's state that travels with checkpoints: seed, batch size, dataset size.

    ``state_dict`` / ``load_state_dict`` make a resumed job continue the same stream, and
    :meth:`set_start_iter` positions it; both must happen before the loader is first iterated
    (the trainer creates its iterator lazily, at the first step).
    """

    def __init__(self, dataset: SampleStreamDataset, sampler: GlobalSampleStream):
        self.dataset, self.sampler = dataset, sampler

    @property
    def seed(self) -> int:
        return self.dataset.seed

    def set_start_iter(self, start_iter: int) -> None:
        self.sampler.set_start_iter(start_iter)

    def state_dict(self) -> dict:
        return {
            "seed": self.dataset.seed,
            "total_batch_size": self.sampler.total_batch_size,
            "num_images": self.dataset.num_records,
            "world_size": self.sampler.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream of a checkpoint.

        Raises:
            ValueError: SOLVER.IMS_PER_BATCH differs from the checkpoint's (the iteration ->
                sample mapping would change); the message says how to proceed.
        """
        if state["total_batch_size"] != self.sampler.total_batch_size:
            raise ValueError(
                f"Cannot resume exactly: the checkpoint was trained with SOLVER.IMS_PER_BATCH "
                f"{state['total_batch_size']}, this run has {self.sampler.total_batch_size}. "
                f"Resume with SOLVER.IMS_PER_BATCH {state['total_batch_size']} (any number of "
                "processes that divides it), or start a new run from the weights "
                "(MODEL.WEIGHTS <checkpoint>, without --resume)."
            )
        if state["num_images"] != self.dataset.num_records:
            logger.warning(
                f"The checkpoint's training set had {state['num_images']} images, this one has "
                f"{self.dataset.num_records}: the resumed data order differs from the original."
            )
        if state.get("world_size") != self.sampler.world_size:
            logger.info(
                f"Resuming a {state.get('world_size')}-process run with "
                f"{self.sampler.world_size} processes: same total batch, same data stream."
            )
        if state["seed"] != self.dataset.seed:
            logger.warning(
                f"Using the checkpoint's data stream seed {state['seed']} instead of "
                f"{self.dataset.seed}, so that the resumed run continues the same stream."
            )
        self.dataset.seed = int(state["seed"])
        self.dataset._perm_epoch = None


def resolve_data_seed(cfg_seed: int) -> int:
    """The stream's seed: ``cfg_seed`` if >= 0, else one random seed shared by all processes.

    A drawn seed is stored in every checkpoint (:class:`DataStream`), so ``--resume`` reuses
    it; the checkpoint's seed always wins over SEED on resume.
    """
    if cfg_seed >= 0:
        return int(cfg_seed)
    seed = int(comm.shared_random_seed())
    logger.info(f"SEED < 0: data stream seed {seed} drawn (stored in checkpoints)")
    return seed
