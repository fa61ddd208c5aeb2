"""End-to-end pretraining through train_net.py's setup and SoCoTrainer (tiny, CPU)."""
import json
import os
import socket

import pytest
import torch
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


def test_cpu_mixed_precision_is_bf16_autocast(tiny_images, tmp_path):
    amp = ["SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2"]
    _train_and_dump(_opts(tiny_images, tmp_path, "test_train_syn_amp") + amp
                    + ["SOLVER.AMP.PRECISION", "bfloat16"], str(tmp_path))
    with open(tmp_path / "metrics.json") as f:
        last = [json.loads(line) for line in f][-1]
    assert torch.isfinite(torch.tensor(last["total_loss"]))
    # parameters stay fp32 under autocast
    state = torch.load(tmp_path / "rank0.pth", weights_only=True)
    assert state["backbone.bottom_up.stem.conv1.weight"].dtype == torch.float32
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION"):
        _train_and_dump(_opts(tiny_images, tmp_path / "fp16", "test_train_syn_amp") + amp
                        + ["SOLVER.AMP.PRECISION", "float16"], str(tmp_path))
