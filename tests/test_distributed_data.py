"""Distributed data semantics: every image once per epoch across ranks, the same stream for any
number of processes and loader workers, rank 0 alone writes, resume with another world size."""
import json
import os
import socket

import numpy as np
import pytest
import torch
from detectron2.data.build import build_batch_data_loader
from detectron2.engine import launch

from soco_d2.data.sample_stream import (
    DataStream,
    GlobalSampleStream,
    SampleStreamDataset,
    epoch_permutation,
    resolve_data_seed,
)
from soco_d2.data.synthetic import generate_synthetic_dataset
from train_helpers import TrainArgs



class IdMapper:
    """Stands in for SoCoDatasetMapper: what was drawn for a sample, with its seed."""

    def __call__(self, record, seed=None):
        return (record["image_id"], tuple(int(w) for w in seed))


def _records(n):
    return [{"file_name": f"{i}.jpg", "image_id": i} for i in range(n)]


def _rank_stream(n, total_batch, rank, world, iters, start_iter=0, seed=0):
    ds = SampleStreamDataset(_records(n), IdMapper(), seed)
    it = iter(GlobalSampleStream(total_batch, rank, world, start_iter))
    b = total_batch // world
    return [[next(it) for _ in range(b)] for _ in range(iters)], ds


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n, per_rank", [(12, 2), (7, 1), (10, 3)])
def test_each_epoch_sees_every_image_once_across_ranks(world, n, per_rank):
    total = world * per_rank
    iters = -(-3 * n // total)  # at least three epochs
    streams = [_rank_stream(n, total, r, world, iters) for r in range(world)]
    ds = streams[0][1]
    # iteration i: the ranks' shares are disjoint and together are samples [i*B, (i+1)*B)
    for i in range(iters):
        ks = [k for s, _ in streams for k in s[i]]
        assert ks == list(range(i * total, (i + 1) * total))
    # epoch e = samples [e*N, (e+1)*N): every image exactly once, whatever rank drew it
    for e in range(3):
        ids = sorted(ds.record_index(k) for k in range(e * n, (e + 1) * n))
        assert ids == list(range(n))
    assert not np.array_equal(epoch_permutation(0, 0, n), epoch_permutation(0, 1, n))


def _loader_batches(n, total, world, workers, iters, start_iter=0, seed=11):
    """Per iteration, the samples of all ranks (rank order), through Detectron2's loader."""
    per_rank = []
    for rank in range(world):
        ds = SampleStreamDataset(_records(n), IdMapper(), seed)
        sampler = GlobalSampleStream(total, rank, world, start_iter)
        loader = build_batch_data_loader(
            ds, sampler, 0, single_gpu_batch_size=total // world, num_workers=workers
        )
        it = iter(loader)
        per_rank.append([next(it) for _ in range(iters)])
        del it
    return [sum((per_rank[r][i] for r in range(world)), []) for i in range(iters)]


def test_stream_is_the_same_for_any_world_size_and_worker_count():
    n, total, iters = 10, 6, 5
    ref = _loader_batches(n, total, world=1, workers=0, iters=iters)
    for world, workers in [(2, 0), (3, 0), (1, 2), (2, 2), (3, 2)]:
        assert _loader_batches(n, total, world, workers, iters) == ref, (world, workers)
    # resuming at iteration 3 continues exactly there, with another world size too
    assert _loader_batches(n, total, 2, 2, 2, start_iter=3) == ref[3:5]
    # the augmentation seeds differ between samples, also for the same image in two epochs
    seeds = [s for batch in ref for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_stream_state_and_resume_rules():
    ds = SampleStreamDataset(_records(8), IdMapper(), resolve_data_seed(-1))  # drawn seed
    state = DataStream(ds, GlobalSampleStream(4, 0, 2)).state_dict()
    assert state == {"seed": ds.seed, "total_batch_size": 4, "num_images": 8, "world_size": 2}
    # another number of processes, same total batch: same seed, same stream
    other = SampleStreamDataset(_records(8), IdMapper(), seed=ds.seed + 1)
    stream = DataStream(other, GlobalSampleStream(4, 0, 1))
    stream.load_state_dict(state)
    assert other.seed == ds.seed and [other[k] for k in range(8)] == [ds[k] for k in range(8)]
    # another total batch: refused, with what to do
    with pytest.raises(ValueError, match=r"IMS_PER_BATCH 4, this run has 8.*MODEL\.WEIGHTS"):
        DataStream(other, GlobalSampleStream(8, 0, 1)).load_state_dict(state)
    with pytest.raises(ValueError, match=r"IMS_PER_BATCH \(6\) must be a positive multiple"):
        GlobalSampleStream(6, 0, 4)


# ------------------------------------------------------------------ 2 processes, then 1


class _RecordingLoader:
    def __init__(self, loader, log):
        self.loader, self.log = loader, log

    def __iter__(self):
        for batch in self.loader:
            self.log.append([d["image_id"] for d in batch])
            yield batch


def _train_and_record(opts, resume, dump_dir):
    from detectron2.utils import comm

    from soco_d2.methods.soco import SoCoTrainer
    from train_net import setup

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = SoCoTrainer(setup(TrainArgs(opts, resume=resume)))
        log = []
        trainer._trainer.data_loader = _RecordingLoader(trainer._trainer.data_loader, log)
        trainer.resume_or_load(resume=resume)
        start = trainer.start_iter
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    info = {
        "start_iter": start,
        "batches": log,
        "save_to_disk": trainer.checkpointer.save_to_disk,
        "hooks": [type(h).__name__ for h in trainer._hooks],
    }
    name = f"{'resume' if resume else 'run'}_rank{comm.get_rank()}.json"
    with open(os.path.join(dump_dir, name), "w") as f:
        json.dump(info, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_then_resume_with_one(tmp_path):
    from detectron2.data import DatasetCatalog

    from train_net import setup

    json_file, image_root = generate_synthetic_dataset(
        str(tmp_path / "syn"), num_train=8, num_val=0, min_size=96, max_size=128
    )["train"]
    out = tmp_path / "out"
    opts = [
        "OUTPUT_DIR", str(out), "SEED", "5", "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TRAIN", "('test_dist_syn',)",
        "DATASETS.SOCO_REGISTER", f"[('test_dist_syn', '{image_root}', '', '{json_file}')]",
    ]
    launch(
        _train_and_record, 2, num_machines=1, machine_rank=0,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(opts + ["SOLVER.MAX_ITER", "4"], False, str(tmp_path)),
    )
    # The same job resumed with one process (same total batch) for two more iterations.
    _train_and_record(opts + ["SOLVER.MAX_ITER", "6"], True, str(tmp_path))

    def load(name):
        with open(tmp_path / name) as f:
            return json.load(f)

    r0, r1, resumed = load("run_rank0.json"), load("run_rank1.json"), load("resume_rank0.json")

    # What the stream says iteration i holds: samples [4i, 4i+4) of seed 5 over these records.
    setup(TrainArgs(opts))
    ds = SampleStreamDataset(DatasetCatalog.get("test_dist_syn"), IdMapper(), seed=5)
    ids = [ds.records[ds.record_index(k)]["image_id"] for k in range(24)]
    expected = [ids[4 * i: 4 * i + 4] for i in range(6)]

    # two ranks: 2 images each per iteration, together the expected global batch
    assert [a + b for a, b in zip(r0["batches"], r1["batches"])] == expected[:4]
    # 4 iterations x 4 images = 2 epochs of 8 images: each image once per epoch across ranks
    all_ids = sorted(DatasetCatalog.get("test_dist_syn"), key=lambda d: d["image_id"])
    for epoch in range(2):
        seen = sorted(i for it in range(2 * epoch, 2 * epoch + 2) for i in expected[it])
        assert seen == [d["image_id"] for d in all_ids]
    # one process continues the very same stream at iteration 4
    assert resumed["start_iter"] == 4 and resumed["batches"] == expected[4:6]

    # only rank 0 checkpoints and writes metrics/events; rank 1 has no writer hooks
    assert r0["save_to_disk"] and not r1["save_to_disk"]
    assert {"PeriodicCheckpointer", "PeriodicWriter"} <= set(r0["hooks"])
    assert not {"PeriodicCheckpointer", "PeriodicWriter"} & set(r1["hooks"])
    files = os.listdir(out)
    assert len([f for f in files if f.startswith("events.out.tfevents")]) == 2  # run + resume
    with open(out / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations == sorted(set(iterations))  # one writer: no duplicated rows
    # Detectron2 gives other ranks their own text log (the only place their errors appear)
    assert [f for f in files if "rank" in f] == ["log.txt.rank1"]
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5 and ckpt["trainer"]["data_stream"]["world_size"] == 1
