"""End-to-end pretraining through train_net.py's setup and SoCoTrainer (tiny, CPU)."""
import json
import os
import socket

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import launch

from train_helpers import TrainArgs, dataset_opts

NAIVE_SYNC_BN = [
    "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.FPN.NORM", "naiveSyncBN",
    "MODEL.ROI_BOX_HEAD.NORM", "naiveSyncBN", "MODEL.SOCO.HEAD_NORM", "naiveSyncBN",
]


def _opts(tiny_images, output_dir, name="test_train_syn"):
    return ["OUTPUT_DIR", str(output_dir), *dataset_opts(name, tiny_images)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_and_dump(opts, dump_dir):
    # Runs in each launched process: train, then write this rank's full state.
    from detectron2.utils import comm

    from soco_d2.methods.soco import SoCoTrainer
    from train_net import setup

    torch.set_num_threads(1)
    cfg = setup(TrainArgs(opts))
    trainer = SoCoTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(dump_dir, f"rank{comm.get_rank()}.pth"))


def test_single_process_run_writes_checkpoint_metrics_and_momentum(tiny_images, tmp_path):
    _train_and_dump(_opts(tiny_images, tmp_path) + ["SOLVER.MAX_ITER", "3"], str(tmp_path))
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert os.path.isfile(tmp_path / "last_checkpoint")
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    last = rows[-1]
    assert last["iteration"] == 2
    # a single loss term is logged by Detectron2 as total_loss (= loss_soco)
    assert torch.isfinite(torch.tensor(last["total_loss"]))
    # cosine schedule from 0.99: strictly between base and 1 before the end, 1 at the end
    assert last["soco/momentum"] == pytest.approx(1.0)
    # learning monitors at the writers' period (and the last iteration)
    for pair in ("v1_v2", "v1_v3"):
        assert -1.0 <= last[f"soco/cos_{pair}"] <= 1.0
    d = 32  # PROJECTOR_DIM of the instant config
    assert 0 < last["soco/target_std"] <= 1.0
    assert last["soco/target_std_x_sqrt_d"] == pytest.approx(last["soco/target_std"] * d ** 0.5, rel=1e-4)
    for part in ("bottom_up", "fpn", "box_head", "projector", "predictor", "group_lars", "group_no_lars"):
        assert 0 < last[f"update_ratio/{part}"] < 1, part
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    assert any(k.startswith("target.backbone.") for k in ckpt["model"])
    # LARS state and LR scheduler travel in the trainer's state
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]
    assert any("LRScheduler" in k for k in ckpt["trainer"]["hooks"])


def test_epochs_become_iterations_in_the_saved_config(tiny_images, tmp_path):
    import yaml

    # 8 images, batch 2: 1 epoch = 4 iterations
    _train_and_dump(_opts(tiny_images, tmp_path, "test_train_syn_ep")
                    + ["SOLVER.EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "1"], str(tmp_path))
    with open(tmp_path / "config.yaml") as f:
        saved = yaml.safe_load(f)
    assert saved["SOLVER"]["MAX_ITER"] == 8 and saved["SOLVER"]["WARMUP_ITERS"] == 4
    with open(tmp_path / "metrics.json") as f:
        assert [json.loads(line) for line in f][-1]["iteration"] == 7


def test_two_process_gloo_run_keeps_ranks_identical(tiny_images, tmp_path):
    opts = _opts(tiny_images, tmp_path, "test_train_syn_ddp") + NAIVE_SYNC_BN + ["SOLVER.MAX_ITER", "2"]
    launch(
        _train_and_dump, 2, num_machines=1, machine_rank=0,
        dist_url=f"tcp://127.0.0.1:{_free_port()}", args=(opts, str(tmp_path)),
    )
    s0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert s0.keys() == s1.keys()
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")
    # the two ranks did train: weights moved away from a fresh initialisation's target copy
    assert any(not torch.equal(s0[k], s0["target." + k]) for k in s0 if k.startswith("backbone.") and "weight" in k)
    # only rank 0 writes checkpoints
    assert os.path.isfile(tmp_path / "model_final.pth")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_mixed_precision_fits_the_cpu(tiny_images, tmp_path, monkeypatch, native_bf16):
    """SOLVER.AMP.ENABLED on a CPU: bf16 autocast where the CPU has native bf16, fp32 where it
    has not (whatever SOLVER.AMP.PRECISION says); parameters stay fp32 either way."""
    from detectron2.engine import SimpleTrainer

    from soco_d2.engine import precision
    from soco_d2.engine.ddp import CPUAutocastTrainer
    from soco_d2.methods.soco import SoCoTrainer
    from train_net import setup

    features = precision.CpuFeatures(amx_bf16=native_bf16, avx512_bf16=False, capability="test")
    monkeypatch.setattr(precision, "cpu_features", lambda: features)
    opts = _opts(tiny_images, tmp_path, "test_train_syn_amp") + [
        "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2", "SOLVER.AMP.PRECISION", "float16"]
    torch.set_num_threads(1)
    trainer = SoCoTrainer(setup(TrainArgs(opts)))
    expected = CPUAutocastTrainer if native_bf16 else SimpleTrainer
    assert type(trainer._trainer) is expected
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(tmp_path / "metrics.json") as f:
        last = [json.loads(line) for line in f][-1]
    assert torch.isfinite(torch.tensor(last["total_loss"]))
    assert trainer.model.backbone.bottom_up.stem.conv1.weight.dtype == torch.float32
    log = (tmp_path / "log.txt").read_text()
    assert ("bf16 autocast" if native_bf16 else "no native bf16") in log


def _probe_set(tiny_images, name="test_probe_det") -> str:
    """The tiny scenes with their labels as a registered detection set (once per process)."""
    from detectron2.data.datasets import register_coco_instances

    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, *tiny_images)
    return name


def test_probe_hook_measures_initialisation_and_end(tiny_images, tmp_path):
    """TEST.PROBE.DATASET set: the probe runs before the first step and after the last, into
    metrics.json (kNN / linear accuracies in [0, 1]) and the log."""
    opts = _opts(tiny_images, tmp_path) + [
        "SOLVER.MAX_ITER", "3", "TEST.PROBE.DATASET", _probe_set(tiny_images), "TEST.PROBE.PERIOD", "1",
    ]
    _train_and_dump(opts, str(tmp_path))
    with open(tmp_path / "probe.json") as f:
        probes = json.load(f)["probes"]
    # before the first step, after step 1 (period 1), after the last step
    assert [(p["iteration"], p["when"]) for p in probes] == [
        (0, "initialisation"), (0, "periodic"), (1, "periodic"), (2, "final")]
    for p in probes:
        assert p["num_images"] == 8 and p["num_classes"] >= 1
        for key in ("knn_head", "linear_head", "knn_pooled", "linear_pooled"):
            assert 0.0 <= p[key] <= 1.0
    with open(tmp_path / "metrics.json") as f:
        last = [json.loads(line) for line in f][-1]
    assert last["iteration"] == 2 and last["probe/knn_head"] == probes[-1]["knn_head"]
    log = (tmp_path / "log.txt").read_text()
    assert "Probe of the trunk (initialisation, iteration 0)" in log
    assert "Probe of the trunk (final, iteration 2)" in log


def test_a_resumed_run_keeps_the_probes_of_before_in_probe_json(tiny_images, tmp_path):
    """probe.json is the whole run's curve: a run resumed (here continued to a longer schedule)
    keeps the probes from before the resumed iteration and appends its own."""
    from soco_d2.methods.soco import SoCoTrainer
    from train_net import setup

    torch.set_num_threads(1)
    base = _opts(tiny_images, tmp_path) + ["TEST.PROBE.DATASET", _probe_set(tiny_images)]
    _train_and_dump(base + ["SOLVER.MAX_ITER", "2"], str(tmp_path))
    trainer = SoCoTrainer(setup(TrainArgs(base + ["SOLVER.MAX_ITER", "3"])))
    trainer.resume_or_load(resume=True)
    trainer.train()
    with open(tmp_path / "probe.json") as f:
        probes = json.load(f)["probes"]
    assert [(p["iteration"], p["when"]) for p in probes] == [
        (0, "initialisation"), (1, "final"), (2, "resumed"), (2, "final")]


def test_probe_hook_also_probes_the_stored_bn_statistics(tiny_images, tmp_path):
    """TEST.PROBE.STORED_BN: each probe is also run without re-estimating BatchNorm, logged as
    probe_stored_bn/*; at initialisation the stored statistics are (0, 1), not the images'."""
    opts = _opts(tiny_images, tmp_path) + [
        "SOLVER.MAX_ITER", "2", "TEST.PROBE.DATASET", _probe_set(tiny_images), "TEST.PROBE.STORED_BN", "True",
    ]
    _train_and_dump(opts, str(tmp_path))
    with open(tmp_path / "probe.json") as f:
        probes = json.load(f)["probes"]
    assert [p["when"] for p in probes] == ["initialisation", "final"]
    for p in probes:
        stored = p["stored_bn"]
        assert stored["num_boxes"] == p["num_boxes"] and 0.0 <= stored["knn_head_bal"] <= 1.0
    # different statistics, different features: the effective ranks differ
    assert probes[0]["stored_bn"]["erank_pooled"] != pytest.approx(probes[0]["erank_pooled"])
    with open(tmp_path / "metrics.json") as f:
        last = [json.loads(line) for line in f][-1]
    assert last["probe_stored_bn/knn_head"] == probes[-1]["stored_bn"]["knn_head"]


def test_soco_from_weights_starts_with_the_target_as_a_copy(tiny_images, tmp_path):
    """MODEL.WEIGHTS fills the online network; a started (not resumed) run copies it into the
    target, so that SoCo continued from a trunk regresses that trunk, not a random network."""
    from soco_d2.methods.soco import SoCoTrainer
    from train_net import setup

    torch.set_num_threads(1)
    first = tmp_path / "first"
    _train_and_dump(_opts(tiny_images, first) + ["SOLVER.MAX_ITER", "2"], str(tmp_path))
    trunk = first / "model_final_trunk.pth"
    cfg = setup(TrainArgs(_opts(tiny_images, tmp_path / "second")
                          + ["SOLVER.MAX_ITER", "2", "MODEL.WEIGHTS", str(trunk)]))
    trainer = SoCoTrainer(cfg)
    trainer.resume_or_load(resume=False)
    loaded = torch.load(trunk, weights_only=True)["model"]
    state = trainer.model.state_dict()
    assert any(k.startswith("roi_heads.") for k in loaded)
    for k, v in loaded.items():
        assert torch.equal(state[k], v), k
        assert torch.equal(state["target." + k], v), k  # was the target's random init before
    log = (tmp_path / "second" / "log.txt").read_text()
    assert "Momentum target initialised as a copy of the online network" in log
